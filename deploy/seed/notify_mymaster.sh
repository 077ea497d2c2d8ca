#!/bin/bash
# notify_mymaster.sh: the seed article's Sentinel client-reconfig-script, kept for the lab's comparison
# (see BENCHMARKS.md). It is NOT part of havip-agent; the agent and `migrate-havip` replace it.
#
# Sentinel calls it as: <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>
# If the new master (<to-ip>) is this host, bind the VIP and announce it; otherwise remove it.
#
# The operator edits the four values below per host; the lab fills in the @...@ placeholders.
# One translation: the seed runs iputils' `arping -q -c 3 -A ${VIP} -I ${INTERFACE}` (three unsolicited
# ARP replies for the VIP, broadcast, one second apart). Debian ships Thomas Habets' arping, where -A means
# something else; the same frames are `-U -P -S ${VIP} -i ${INTERFACE} ${VIP}` there.
MASTER_IP=${6}
LOCAL_IP='@LOCAL_IP@'
VIP='@VIP@'
NETMASK='@NETMASK@'
INTERFACE='@INTERFACE@'

if [ ${MASTER_IP} = ${LOCAL_IP} ]; then
    /sbin/ip addr add ${VIP}/${NETMASK} dev ${INTERFACE}
    /usr/sbin/arping -q -c 3 -U -P -S ${VIP} -i ${INTERFACE} ${VIP}
    exit 0
else
    /sbin/ip addr del ${VIP}/${NETMASK} dev ${INTERFACE}
    exit 0
fi
exit 1
