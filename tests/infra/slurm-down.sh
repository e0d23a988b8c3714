#!/usr/bin/env bash
# Stop the one-node test cluster started by slurm-up.sh: cancel its jobs,
# stop slurmd, slurmctld and munged (only those named in the sandbox's pid
# files), and kill any slurmstepd of this cluster still around. Idempotent.
# Keeps the sandbox (state, logs, jobcomp file, munge key); delete
# ${LMSWEEP_SLURM_DIR:-/tmp/lmsweep-slurm} yourself for a clean slate.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm-common.sh
. "$HERE/slurm-common.sh"

[[ -d $SANDBOX ]] || exit 0

if [[ -z ${LMSWEEP_SLURM_LOCKED:-} ]]; then
    exec 9>"$SANDBOX/.lock"
    flock -w 60 9 || { log "another slurm-up/down holds $SANDBOX/.lock"; exit 1; }
fi

ctld=$(pid_alive "$SLURMCTLD_PID" slurmctld || true)

# 1. Cancel all jobs while slurmctld can still do it cleanly.
if [[ -n $ctld && -r $CONF ]]; then
    export SLURM_CONF=$CONF
    mapfile -t jobs < <(timeout 10 squeue -h -o %F 2>/dev/null | sort -u)
    if ((${#jobs[@]})); then
        timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            [[ -z $(timeout 5 squeue -h -t R,CG,S,CF -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
fi

# 2. Stop the daemons (slurmd and slurmctld together, then munged).
for spec in "$SLURMD_PID:slurmd" "$SLURMCTLD_PID:slurmctld"; do
    if pid=$(pid_alive "${spec%:*}" "${spec##*:}"); then
        kill -TERM "$pid" 2>/dev/null || true
    fi
done
stop_daemon "$SLURMD_PID" slurmd 20
stop_daemon "$SLURMCTLD_PID" slurmctld 20
stop_daemon "$MUNGED_PID" munged 10

# 3. Stray job step daemons of this cluster and their process trees.
mapfile -t stepds < <(our_stepds)
if ((${#stepds[@]})); then
    mapfile -t kids < <(descendants "${stepds[@]}")
    log "killing leftover slurmstepd ${stepds[*]} and ${#kids[@]} descendant(s)"
    kill -KILL "${kids[@]}" "${stepds[@]}" 2>/dev/null || true
    for pid in "${stepds[@]}"; do wait_pid_gone "$pid" 5 || true; done
fi

rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
echo "slurm down: $SANDBOX"
