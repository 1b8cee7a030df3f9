#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for `tests/test_slurm.py` and for trying
# `resexp sweep --launcher slurm` without a cluster:  scripts/slurm_local.sh up|down|status
#
# Needs root and Debian/Ubuntu packages (slurmctld slurmd slurm-client munge, plus slurmdbd and
# mariadb-server for `sacct`); `up` installs what is missing with apt-get. No systemd, no cgroups:
# proctrack/linuxproc + task/none. The node is this host with its CPUs and two fake GPUs (char
# devices), so `--gres=gpu:1` schedules and sets CUDA_VISIBLE_DEVICES. Partitions:
#   debug   default, no time limit, never preempted
#   gpu     MaxTime 4 h, GraceTime 20 s, preempted (requeued) by `urgent`
#   urgent  a higher priority tier: a job there preempts `gpu` jobs (how the tests preempt)
# EnforcePartLimits=ALL makes SLURM refuse over-limit jobs at submit time (resexp relies on
# `sbatch --test-only` for its bad-input checks). `down` stops the daemons by PID file, never by
# name, after cancelling every job. Both are idempotent.
set -euo pipefail

CONF=/etc/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid)
ACCOUNTING=${ACCOUNTING:-1}   # 0: no slurmdbd/MariaDB (then `sacct` is off; resexp falls back to squeue)

log() { echo "[slurm_local $(date +%T)] $*"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.25 s
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

install_packages() {
  local pkgs="slurmctld slurmd slurm-client munge"
  [ "$ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  # shellcheck disable=SC2086
  dpkg -s $pkgs >/dev/null 2>&1 && return 0
  log "installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
}

write_config() {
  local host cpus mem acct
  host=$(hostname -s)
  # At least 8 schedulable CPUs even on a 2-core machine (config_overrides: slurmd believes the
  # config): GPUs, not cores, are what the tests contend for, and an `urgent` job must preempt a
  # GPU job only, never a CPU-only one that merely holds a core.
  cpus=$(( $(nproc) > 8 ? $(nproc) : 8 ))
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))  # MiB offered to jobs
  mkdir -p $CONF /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  chown munge:munge /run/munge
  # A GRES needs a File= that is a char device, else the node drains ("count reported lower").
  [ -e /dev/fakegpu0 ] || mknod /dev/fakegpu0 c 1 3
  [ -e /dev/fakegpu1 ] || mknod /dev/fakegpu1 c 1 3
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  # sched_interval=1 / bf_interval=1: preemption and array tasks start within a second or two,
  # which keeps the SLURM tests short. cred_expire=5: a requeued job may start again ~6 s later.
  cat > $CONF/slurm.conf <<EOF
ClusterName=resexp
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MailProg=/bin/true
KillWait=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldParameters=preempt_send_user_signal
EnforcePartLimits=ALL
$acct
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE PreemptMode=OFF State=UP
PartitionName=gpu Nodes=$host MaxTime=04:00:00 PriorityTier=1 GraceTime=20 State=UP
PartitionName=urgent Nodes=$host MaxTime=04:00:00 PriorityTier=2 PreemptMode=OFF State=UP
EOF
  echo "NodeName=$host Name=gpu File=/dev/fakegpu[0-1]" > $CONF/gres.conf
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
}

start_accounting() {
  chown mysql:mysql /run/mysqld
  if ! running /run/mysqld/mysqld.pid; then
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
      >/var/log/slurm/mariadb.log 2>&1 </dev/null &
  fi
  wait_for 30 mariadb -e "select 1" || { tail -20 /var/log/slurm/mariadb.log; exit 1; }
  # CREATE USER IF NOT EXISTS keeps an existing user's password: ALTER USER sets the one
  # slurmdbd.conf below gives (a `slurm` user left with another one would lock slurmdbd out).
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'resexp';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'resexp';
              CREATE DATABASE IF NOT EXISTS slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > $CONF/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=resexp
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm $CONF/slurmdbd.conf; chmod 600 $CONF/slurmdbd.conf
  running /run/slurmdbd.pid || /usr/sbin/slurmdbd
  wait_for 30 sacctmgr -n show cluster || { tail -20 /var/log/slurm/slurmdbd.log; exit 1; }
  sacctmgr -n show cluster format=cluster | grep -qw resexp || sacctmgr -i add cluster resexp >/dev/null
}

up() {
  [ "$(id -u)" = 0 ] || { echo "slurm_local.sh: needs root (it installs packages and starts daemons)" >&2; exit 2; }
  install_packages
  write_config
  running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null
  [ "$ACCOUNTING" = 1 ] && start_accounting
  running /run/slurmctld.pid || /usr/sbin/slurmctld
  running /run/slurmd.pid || /usr/sbin/slurmd
  node_idle() { [ "$(sinfo -h -o %T -p debug)" = idle ]; }
  if ! wait_for 30 node_idle; then
    sinfo -R; tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; exit 1
  fi
  log "up: $(sinfo -h -o '%P(%l)' | tr '\n' ' ')on $(hostname -s), $(sinfo -h -o %c -p debug) CPUs, 2 fake GPUs"
}

stop() {  # stop PIDFILE: TERM, then wait up to 10 s
  running "$1" || return 0
  local pid; pid=$(cat "$1")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "slurm_local.sh: $1 ($pid) still running" >&2
  return 1
}

down() {
  if command -v squeue >/dev/null && running /run/slurmctld.pid; then
    local jobs; jobs=$(squeue -h -o %A 2>/dev/null | sort -u | xargs)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel --full $jobs 2>/dev/null || true
      wait_for 20 test -z "$(squeue -h -o %A 2>/dev/null)" || true
    fi
  fi
  local rc=0
  for f in "${PIDS[@]}"; do stop "$f" || rc=1; done
  log "down"
  return $rc
}

status() {
  local f
  for f in "${PIDS[@]}"; do running "$f" && echo "$(basename "$f" .pid): $(cat "$f")" || echo "$(basename "$f" .pid): stopped"; done
  command -v sinfo >/dev/null && running /run/slurmctld.pid && sinfo
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
