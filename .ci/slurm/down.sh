#!/usr/bin/env bash
# Stops the single-node SLURM cluster that .ci/slurm/up.sh started: slurmd, slurmctld, slurmdbd, MariaDB,
# munged, each by the pid in its pid file (nothing else is signalled). Queued or running jobs are lost; the
# accounting database and the configuration stay, so `up.sh` brings the same cluster back.
#   sudo .ci/slurm/down.sh
set -euo pipefail

STATE=/var/lib/jsae-slurm
say() { printf '[slurm down] %s\n' "$*"; }

stop() {  # stop NAME PIDFILE
    local name=$1 pidfile=$2 pid
    if [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "$name: not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || { say "$name: stopped (pid $pid)"; return 0; }
        sleep 1
    done
    say "$name: still running after 30 s, sending SIGKILL (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
}

stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadb /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
