#!/bin/bash
# notify_mymaster.sh: the seed article's Sentinel client-reconfig-script, kept for the lab's comparison
# (see BENCHMARKS.md). It is NOT part of havip-agent; the agent and `migrate-havip` replace it.
#
# Sentinel calls it as: <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>
# If the new master (<to-ip>) is this host, bind the VIP and announce it; otherwise remove it.
#
# The operator edits the four values below per host; the lab fills in the @...@ placeholders.
# One addition: the seed runs iputils' `arping -q -c 3 -A -I ${INTERFACE} ${VIP}` (three unsolicited
# ARP replies for the VIP, broadcast, one second apart). Debian's `arping` package is Thomas Habets' arping,
# where -A means something else and the same frames are `-U -P -S ${VIP} -i ${INTERFACE} ${VIP}`; the two
# packages conflict, so the script asks which one is installed (iputils' names itself in `-V`).
MASTER_IP=${6}
LOCAL_IP='@LOCAL_IP@'
VIP='@VIP@'
NETMASK='@NETMASK@'
INTERFACE='@INTERFACE@'

if [ ${MASTER_IP} = ${LOCAL_IP} ]; then
    /sbin/ip addr add ${VIP}/${NETMASK} dev ${INTERFACE}
    ARPING=$(command -v arping || echo /usr/sbin/arping)
    if "${ARPING}" -V 2>&1 | grep -q iputils; then
        "${ARPING}" -q -c 3 -A -I ${INTERFACE} ${VIP}
    else
        "${ARPING}" -q -c 3 -U -P -S ${VIP} -i ${INTERFACE} ${VIP}
    fi
    exit 0
else
    /sbin/ip addr del ${VIP}/${NETMASK} dev ${INTERFACE}
    exit 0
fi
exit 1
