#!/bin/sh
# One etcd member on loopback, holding Patroni's leader key.  Its ports are
# 2479 (clients) and 2480 (peers), not etcd's usual 2379/2380: Debian's
# etcd-server package enables its own etcd.service there.  Every URL that
# names a port says so, or etcd advertises 2379/2380 anyway.
exec etcd --name demo --data-dir /srv/demo/etcd \
    --listen-client-urls http://127.0.0.1:2479 \
    --advertise-client-urls http://127.0.0.1:2479 \
    --listen-peer-urls http://127.0.0.1:2480 \
    --initial-advertise-peer-urls http://127.0.0.1:2480 \
    --initial-cluster demo=http://127.0.0.1:2480
