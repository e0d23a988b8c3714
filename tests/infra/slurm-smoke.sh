#!/usr/bin/env bash
# End-to-end check of the test cluster (run after slurm-up.sh; ~40 s).
# Prints what it observes and exits non-zero on the first failed check.
# Does not start or stop the cluster.
set -euo pipefail

SANDBOX="${LMSWEEP_SLURM_DIR:-/tmp/lmsweep-slurm}"
# shellcheck disable=SC1091
. "$SANDBOX/env.sh"
export PATH="/usr/sbin:/usr/bin:$PATH"
T=$(mktemp -d "${TMPDIR:-/tmp}/slurm-smoke.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T"

ok() { echo "ok: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }
# wait_gone JOBID TIMEOUT: until squeue lists no pending/running task of JOBID
wait_gone() {
    local i
    for ((i = 0; i < $2 * 2; i++)); do
        [[ -z $(squeue -h -j "$1" -t PD,R,CG,S,CF -o %i 2>/dev/null) ]] && return 0
        sleep 0.5
    done
    die "job $1 still queued after $2 s"
}
field() { grep -oE "(^| )$1=[^ ]*" | head -n 1 | sed "s/^ *$1=//"; }

echo "== array 0-3%2"
a=$(sbatch --parsable --array=0-3%2 -o "$T/arr-%A_%a.out" \
    --wrap 'echo $SLURM_ARRAY_TASK_ID; echo "$(date +%s.%N) start" >>'"$T"'/events; sleep 2; echo "$(date +%s.%N) end" >>'"$T"'/events')
max=0
for ((i = 0; i < 60; i++)); do
    n=$(squeue -h -j "$a" -t R -o %i | wc -l)
    ((n > max)) && max=$n
    [[ -z $(squeue -h -j "$a" -o %i) ]] && break
    sleep 0.25
done
wait_gone "$a" 30
for t in 0 1 2 3; do [[ $(cat "$T/arr-${a}_$t.out") == "$t" ]] || die "task $t output"; done
# peak concurrency from the start/end events
peak=$(sort -n "$T/events" | awk '$2=="start"{c++; if(c>m)m=c} $2=="end"{c--} END{print m}')
((peak <= 2 && max <= 2)) || die "throttle exceeded: peak=$peak squeue-max=$max"
((peak == 2)) || echo "note: peak concurrency $peak (expected 2)"
ok "4 tasks ran, peak concurrency $peak (squeue saw $max running)"
squeue -h -t all -j "$a" -o '%i|%A|%F|%K|%T|%r'
scontrol -o show job "${a}_0" | tr ' ' '\n' | grep -E '^(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode)=' | paste -sd' '

echo "== afterok on an array with a failed task"
f=$(sbatch --parsable --array=0-2 -o /dev/null --wrap '[ $SLURM_ARRAY_TASK_ID = 1 ] && exit 3; exit 0')
d=$(sbatch --parsable --dependency=afterok:"$f" -o /dev/null --wrap 'true')
wait_gone "$f" 30
for ((i = 0; i < 20; i++)); do
    r=$(squeue -h -j "$d" -o %r)
    [[ $r == DependencyNeverSatisfied ]] && break
    sleep 0.5
done
[[ $r == DependencyNeverSatisfied ]] || die "dependent job reason: $r"
[[ $(scontrol show job "${f}_1" | field JobState) == FAILED ]] || die "task 1 not FAILED"
[[ $(scontrol show job "${f}_1" | field ExitCode) == 3:0 ]] || die "task 1 ExitCode"
ok "task 1 FAILED ExitCode=3:0; dependent $d PENDING DependencyNeverSatisfied"
squeue -h -j "$d" -o '%i|%T|%r|%E'
grep -E "ArrayJobId=$f ArrayTaskId=1 " "$SANDBOX/jobcomp.log" >/dev/null || die "no jobcomp line for ${f}_1"
scancel "$d"

echo "== scancel --signal=TERM --full reaches the batch script"
cat >"$T/trap.sh" <<'EOF'
#!/bin/bash
trap 'echo got-TERM; exit 143' TERM
echo started
for i in $(seq 1 120); do sleep 0.25; done
echo no-signal
EOF
s=$(sbatch --parsable -o "$T/trap.out" "$T/trap.sh")
for ((i = 0; i < 40; i++)); do grep -q started "$T/trap.out" 2>/dev/null && break; sleep 0.25; done
scancel --full --signal=TERM "$s"
wait_gone "$s" 20
grep -q got-TERM "$T/trap.out" || die "batch script did not get SIGTERM: $(cat "$T/trap.out")"
ok "SIGTERM delivered; $(scontrol show job "$s" | grep -oE '(JobState|ExitCode)=[^ ]*' | paste -sd' ')"

echo "== scontrol requeue"
q=$(sbatch --parsable --requeue --open-mode=append -o "$T/rq.out" --wrap 'echo "restart=${SLURM_RESTART_COUNT:-0}"; sleep 2')
for ((i = 0; i < 40; i++)); do grep -q restart=0 "$T/rq.out" 2>/dev/null && break; sleep 0.25; done
scontrol requeue "$q"
for ((i = 0; i < 80; i++)); do grep -q restart=1 "$T/rq.out" 2>/dev/null && break; sleep 0.5; done
wait_gone "$q" 20
grep -q restart=1 "$T/rq.out" || die "requeued job did not run again: $(cat "$T/rq.out")"
ok "requeued job ran again; $(scontrol show job "$q" | grep -oE '(JobState|Restarts)=[^ ]*' | paste -sd' ')"

echo "== srun -n 2 inside an allocation"
out=$(salloc -Q -n 2 srun -n 2 hostname)
[[ $(wc -l <<<"$out") == 2 ]] || die "srun output: $out"
ok "srun -n 2 hostname -> $(paste -sd' ' <<<"$out")"

echo "slurm smoke: all checks passed"
