#!/usr/bin/env bash
# A Slurm cluster on this machine for the tests: munge, a controller and two compute nodes (node1, node2: two
# slurmd on one host under different node names and ports), partition `studios`. Idempotent: `start` does
# nothing when the controller answers; `stop` ends the daemons. Its configuration is $DIR/slurm.conf
# (SLURM_CONF for the commands and the platform).
#
# Each node offers 2 CPUs and 4096 MB whatever the host has (SlurmdParameters=config_overrides), so two studios of
# 2 CPUs fill the cluster and a third one waits for resources.
set -euo pipefail
DIR="${STUDIOS_SLURM_DIR:-/var/lib/studios/slurm}"
PORT="${STUDIOS_SLURM_PORT:-6917}"
export SLURM_CONF="$DIR/slurm.conf"

start() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null || {
        echo "slurm: slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)" >&2
        exit 1
    }
    if ! pgrep -x munged >/dev/null; then
        [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key; }
        mkdir -p /run/munge && chown munge: /run/munge
        su -s /bin/sh munge -c munged
    fi
    if [ -s "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q UP; then
        return
    fi
    stop
    mkdir -p "$DIR"/{state,spool-node1,spool-node2,log,run}
    cat >"$SLURM_CONF" <<CONF
ClusterName=studios
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
SlurmUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=30
MpiDefault=none
NodeName=node1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=2 RealMemory=4096 State=UNKNOWN
NodeName=node2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT + 3)) CPUs=2 RealMemory=4096 State=UNKNOWN
PartitionName=studios Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N node1
    slurmd -f "$SLURM_CONF" -N node2
    for _ in $(seq 100); do
        if [ "$(sinfo -h -p studios -t idle -o %D 2>/dev/null)" = 2 ]; then
            echo "slurm: controller on 127.0.0.1:$PORT, nodes node1 and node2 idle ($SLURM_CONF)"
            return
        fi
        sleep 0.2
    done
    echo "slurm: the nodes did not come up; see $DIR/log" >&2
    exit 1
}

stop() {
    for pidfile in "$DIR"/run/*.pid; do
        [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
