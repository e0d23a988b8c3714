# Shared helpers for slurm-up.sh / slurm-down.sh. Sourced, not executed.
# shellcheck shell=bash

export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

SANDBOX="${LMSWEEP_SLURM_DIR:-/tmp/lmsweep-slurm}"
CONF="$SANDBOX/slurm.conf"
LOGDIR="$SANDBOX/log"
RUNDIR="$SANDBOX/run"
MUNGE_SOCKET="$SANDBOX/munge.socket"
MUNGED_PID="$RUNDIR/munged.pid"
SLURMCTLD_PID="$RUNDIR/slurmctld.pid"
SLURMD_PID="$RUNDIR/slurmd.pid"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# Echo the pid recorded in pidfile $1 if that process is alive, not a zombie
# and its command name starts with $2. Return non-zero otherwise.
pid_alive() {
    local pidfile=$1 name=$2 pid stat state comm
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null) || return 1
    [[ -n $pid ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # Field 3 of /proc/PID/stat follows the last ')' (comm may contain spaces).
    state=${stat##*) }
    state=${state%% *}
    case $state in Z|X|x) return 1 ;; esac
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]] || return 1
    echo "$pid"
}

# Wait up to $2 seconds for pid $1 to be gone (or a zombie).
wait_pid_gone() {
    local pid=$1 timeout=$2 i state
    for ((i = 0; i < timeout * 10; i++)); do
        [[ -e /proc/$pid ]] || return 0
        state=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
        state=${state##*) }
        state=${state%% *}
        case $state in Z|X|x) return 0 ;; esac
        sleep 0.1
    done
    return 1
}

# Send SIGTERM to the daemon of pidfile $1 (comm prefix $2); SIGKILL after $3 s.
stop_daemon() {
    local pidfile=$1 name=$2 timeout=${3:-15} pid
    if pid=$(pid_alive "$pidfile" "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_pid_gone "$pid" "$timeout"; then
            log "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" 5 || log "$name (pid $pid) still present after SIGKILL"
        fi
    fi
    rm -f "$pidfile"
}

# Pids of slurmstepd processes started by *this* cluster's slurmd (they
# inherit SLURM_CONF=$CONF from it).
our_stepds() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $(cat "$d/comm" 2>/dev/null) == slurmstepd* ]] || continue
        { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" || continue
        echo "$pid"
    done
}

# All descendants of the given pids (not including them).
descendants() {
    local -a queue=("$@") out=()
    local table p c
    table=$(ps -e -o pid=,ppid= 2>/dev/null) || return 0
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        while read -r c; do
            [[ -n $c ]] || continue
            out+=("$c")
            queue+=("$c")
        done < <(awk -v p="$p" '$2 == p { print $1 }' <<<"$table")
    done
    ((${#out[@]})) && printf '%s\n' "${out[@]}"
    return 0
}

tail_logs() {
    local f
    for f in "$LOGDIR"/*.log; do
        [[ -e $f ]] || continue
        echo "----- tail $f -----" >&2
        tail -n "${1:-25}" "$f" >&2
    done
}
