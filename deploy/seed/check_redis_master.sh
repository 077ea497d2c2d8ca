#!/bin/sh
# check_redis_master.sh: the seed's keepalived vrrp_script check, kept for the lab's comparison.
# Succeeds only while the local Redis reports role:master, so only the Sentinel master's keepalived stays
# eligible for the VIP. The lab fills in the @...@ placeholders.
/usr/bin/redis-cli -h @LOCAL_IP@ -p @REDIS_PORT@ info replication | grep -q role:master
