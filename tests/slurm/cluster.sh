#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the Slurm profile test, with
# accounting (slurmdbd + MariaDB) like Bridges-2 and a fake h100-80 GPU.
#   cluster.sh install   Debian packages (root)
#   cluster.sh start     write /etc/slurm/*.conf, start munged, MariaDB, slurmdbd, slurmctld, slurmd
#   cluster.sh stop      stop them (by PID file), whatever state they are in
# Needs root. Every daemon's PID file lives in $STATE (default /run/meddpo-slurm).
set -euo pipefail
STATE=${STATE:-/run/meddpo-slurm}
HOST=$(hostname -s)
ACCOUNT=${ACCOUNT:-meddpo-test}

install() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
     && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.5
  done
}

stop() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    if [[ -f $STATE/$name.pid ]]; then
      kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
    fi
  done
  sleep 1
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    if [[ -f $STATE/$name.pid ]]; then
      kill -9 "$(cat "$STATE/$name.pid")" 2>/dev/null || true
      rm -f "$STATE/$name.pid"
    fi
  done
  # leftovers of an earlier run that kept no PID file must not hold the fixed ports
  pkill -x slurmd 2>/dev/null || true; pkill -x slurmctld 2>/dev/null || true; pkill -x slurmdbd 2>/dev/null || true
  pkill -9 -x slurmstepd 2>/dev/null || true
  for _ in $(seq 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
}

start() {
  stop
  # a fresh controller state every time: no job of an earlier run comes back
  rm -rf /var/spool/slurmctld /var/spool/slurmd
  mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/mysqld /run/munge
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=meddpo
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu,gres/gpu:h100-80
JobAcctGatherType=jobacct_gather/none
AccountingStoreFlags=job_comment
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=2 RealMemory=65536 Gres=gpu:h100-80:1 State=UNKNOWN
PartitionName=RM-shared Nodes=$HOST Default=YES MaxTime=08:00:00 State=UP
PartitionName=GPU-shared Nodes=$HOST Default=NO MaxTime=08:00:00 State=UP
CONF
  echo "NodeName=$HOST Name=gpu Type=h100-80 File=/dev/null Count=1" > /etc/slurm/gres.conf
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
CONF
  chmod 600 /etc/slurm/slurmdbd.conf

  [[ -s /etc/munge/munge.key ]] || (command -v mungekey >/dev/null && mungekey -c -f) || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chmod 400 /etc/munge/munge.key
  # a munged or MariaDB that the package installation started is used as it is
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    munged --force --pid-file="$STATE/munged.pid" 2>/dev/null || munged --force
    [[ -f $STATE/munged.pid ]] || pgrep -x munged > "$STATE/munged.pid"
  fi

  if ! mariadb --socket=/run/mysqld/mysqld.sock -e "select 1" >/dev/null 2>&1; then
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=root --datadir=/var/lib/mysql >/dev/null
    mariadbd --user=root --skip-networking --socket=/run/mysqld/mysqld.sock --datadir=/var/lib/mysql \
      --pid-file="$STATE/mariadbd.pid" >/var/log/slurm/mariadb.log 2>&1 &
  fi
  wait_for 60 mariadb --socket=/run/mysqld/mysqld.sock -e "select 1"
  # fresh accounting too: job ids restart with the controller state, history must not clash
  mariadb --socket=/run/mysqld/mysqld.sock -e "DROP DATABASE IF EXISTS slurm_acct_db"

  slurmdbd
  wait_for 60 sacctmgr -n list cluster
  sacctmgr -i add cluster meddpo >/dev/null 2>&1 || true
  sacctmgr -i add account "$ACCOUNT" cluster=meddpo >/dev/null 2>&1 || true
  sacctmgr -i add user root account="$ACCOUNT" cluster=meddpo >/dev/null 2>&1 || true

  slurmctld
  wait_for 60 scontrol ping
  slurmd
  wait_for 60 bash -c "sinfo -h -N -o '%t' | grep -qE '^(idle|mix)$'"
  echo "slurm up: $(sinfo -h -o '%P %a %D %t' | tr '\n' ';')"
}

"${1:?usage: cluster.sh install|start|stop}"
