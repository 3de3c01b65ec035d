#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the real SLURM check (.ci/slurm/run_study.sh).
#
#   sudo .ci/slurm/up.sh          # idempotent: installs what is missing, (re)starts what is not running
#   .ci/slurm/down.sh             # stops the daemons again
#
# Debian's slurm-wlm (22.05 on bookworm) and munge, slurmctld + slurmd on this host, and job accounting through
# slurmdbd on a local MariaDB. Why slurmdbd: the Snakemake executor plugin (snakemake-executor-plugin-slurm 2.8.0)
# polls job states with `sacct -X --parsable2 --clusters all --name <run id> ...` by default, and after a failure
# asks `sacct -j <id>` for the node and the failed step; with `AccountingStorageType=accounting_storage/none`
# sacct only answers "Slurm accounting storage is disabled" (exit 1), so every status query would fail. Its
# other status command (`--slurm-status-command squeue`) needs no database, but it sees a finished job only while
# slurmctld still keeps it (MinJobAge) and the plugin switches back to sacct whenever sacct exists and MinJobAge
# is short; the check also wants `sacct` to list the jobs as COMPLETED. A local MariaDB is the lightest store
# slurmdbd supports (its only storage plugin is MySQL).
#
# The node is this machine as `slurmd -C` reports it (CPUs, memory). Partitions `cpu` (default) and `gpu`, the
# names profiles/slurm/config.yaml uses, both on this node. The node declares fake GPUs (GRES `gpu`, JSAE_SLURM_FAKE_GPUS
# of them, default 2, each a character device with /dev/null's numbers) so that the `--gpus=1` the plugin turns
# a rule's `gpu=1` into is scheduled on a CPU machine, and each such job gets CUDA_VISIBLE_DEVICES as on a GPU
# node (a study with `device: auto` then finds no CUDA and runs on the CPU). No cgroup plugins
# (proctrack/linuxproc, task/none: containers without systemd often cannot delegate cgroups), so cgroup.conf
# only says so.
set -euo pipefail

CLUSTER=${JSAE_SLURM_CLUSTER:-jsae}
FAKE_GPUS=${JSAE_SLURM_FAKE_GPUS:-2}
CONF_DIR=/etc/slurm
STATE=/var/lib/jsae-slurm              # spool directories, database files, logs, pid files
DB_PASSWORD=jsae-slurmdbd              # local socket only (MariaDB runs with --skip-networking)

say() { printf '[slurm up] %s\n' "$*"; }
die() { printf '[slurm up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)"

# ------------------------------------------------------------------------------------------ packages
need=()
for pkg in slurm-wlm slurmdbd munge mariadb-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    say "packages present: slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm), munge, slurmdbd, mariadb-server"
fi

running() {  # running PIDFILE: the pid in the file is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry the command once a second
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "$what did not come up within ${seconds}s (logs: $STATE/log)"
}

mkdir -p "$STATE"/{run,log,ctld,slurmd,mysql} /run/munge /run/mysqld
chown slurm:slurm "$STATE"/{ctld,log,run}
chown munge:munge /run/munge
chown mysql:mysql "$STATE/mysql" /run/mysqld
chmod 777 "$STATE/log"                 # slurmd (root), slurmctld/slurmdbd (slurm), mysql all log here

# ------------------------------------------------------------------------------------------ configuration
CHANGED=0
WROTE=""
install_conf() {  # install_conf FILE < content: replace FILE only when the content differs
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
    mv "$tmp" "$1"
    chmod 644 "$1"
    CHANGED=1
    WROTE="$WROTE $1"
    say "wrote $1"
}

HOST=$(hostname -s)
node_line=$(slurmd -C | head -1)       # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. ... RealMemory=..
cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$node_line")
mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node_line")
say "node $HOST: $cpus CPUs, $mem MB (from slurmd -C), $FAKE_GPUS fake GPUs"

install_conf "$CONF_DIR/slurm.conf" <<EOF
# Written by .ci/slurm/up.sh: a single-node test cluster on $HOST (do not use in production).
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ReturnToService=2
MpiDefault=none
# a job's processes run at the nice value of the sbatch that submitted it (run_study.sh submits at 19)
PropagatePrioProcess=1
# no cgroups (see cgroup.conf)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cores and memory are consumable: jobs are packed by --cpus-per-task and --mem like on a real cluster
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# accounting: what sacct reads (the Snakemake executor's job-status queries)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobCompType=jobcomp/none
# keep the --comment Snakemake gives each job (its rule and wildcards) for sacct -o Comment
AccountingStoreFlags=job_comment
# finished jobs stay visible to squeue for 10 minutes as well
MinJobAge=600
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF

# fake GPU devices: character devices with /dev/null's numbers (gres/gpu needs a File per GPU: without one
# slurmd reports 0 GPUs and the node is drained; with a plain file it logs an error)
mkdir -p "$STATE/fake-gpu"
for i in $(seq 0 $((FAKE_GPUS - 1))); do
    dev="$STATE/fake-gpu/nvidia$i"
    [ -c "$dev" ] || { rm -f "$dev"; mknod -m 666 "$dev" c 1 3 2>/dev/null || touch "$dev"; }
done
install_conf "$CONF_DIR/gres.conf" <<EOF
# Written by .ci/slurm/up.sh: fake GPUs (no hardware behind them), so --gpus=N schedules on a CPU-only node
# and each job gets CUDA_VISIBLE_DEVICES as on a GPU node.
NodeName=$HOST Name=gpu File=$STATE/fake-gpu/nvidia[0-$((FAKE_GPUS - 1))]
EOF

install_conf "$CONF_DIR/cgroup.conf" <<EOF
# Written by .ci/slurm/up.sh. slurm.conf uses no cgroup plugin (proctrack/linuxproc, task/none): processes
# are tracked through /proc and nothing is confined, which also works in containers without systemd.
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

install_conf "$CONF_DIR/slurmdbd.conf" <<EOF
# Written by .ci/slurm/up.sh: job accounting in a local MariaDB (unix socket).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
chmod 600 "$CONF_DIR/slurmdbd.conf"
if [[ "$WROTE" == *slurmdbd.conf* ]] && running "$STATE/run/slurmdbd.pid"; then
    say "configuration changed: restarting slurmdbd"
    kill -TERM "$(cat "$STATE/run/slurmdbd.pid")"
    for _ in $(seq 30); do running "$STATE/run/slurmdbd.pid" || break; sleep 1; done
fi

# ------------------------------------------------------------------------------------------ daemons
if [ ! -s /etc/munge/munge.key ]; then     # the package's postinst normally creates it
    say "creating /etc/munge/munge.key"
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
if ! running /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 munge munge -n

if ! running /run/mysqld/mysqld.pid; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
        say "initialising the accounting database in $STATE/mysql"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            >"$STATE/log/mariadb-install.log" 2>&1
    fi
    say "starting MariaDB (socket only)"
    setsid runuser -u mysql -- /usr/sbin/mariadbd --datadir="$STATE/mysql" --skip-networking \
        --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
        --innodb-buffer-pool-size=64M --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb --socket=/run/mysqld/mysqld.sock -e 'SELECT 1'
fi
mariadb --socket=/run/mysqld/mysqld.sock -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;"

if ! running "$STATE/run/slurmdbd.pid"; then
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
fi
wait_for 60 slurmdbd sacctmgr -n show cluster

if ! running "$STATE/run/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld
elif [ "$CHANGED" = 1 ]; then
    say "configuration changed: scontrol reconfigure"
    scontrol reconfigure
else
    say "slurmctld running"
fi
wait_for 60 slurmctld scontrol ping

if ! running "$STATE/run/slurmd.pid"; then
    say "starting slurmd"
    /usr/sbin/slurmd
else
    say "slurmd running"
fi

# idle, or already running jobs (mixed / allocated): up
say "waiting for $HOST to be idle"
state=""
for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1)
    case "$state" in
        idle | mixed | allocated) break ;;
        drain* | down* | fail* | inval*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
case "$state" in
    idle | mixed | allocated) ;;
    *) die "node $HOST is '$state', not idle (reason: $(sinfo -h -N -n "$HOST" -o '%E'); logs: $STATE/log)" ;;
esac
say "up: cluster $CLUSTER, partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"
sinfo -N -o '%N %P %T %c %m %G'
