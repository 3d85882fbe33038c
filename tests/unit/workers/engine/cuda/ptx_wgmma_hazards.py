#!/usr/bin/env python3
"""Checks the PTX of the wgmma kernels for register accesses that race with an asynchronous wgmma:
a write to one of its A-operand registers, or any use of its accumulator registers by another
instruction, before the wgmma.wait_group that covers it. The PTX ISA makes both undefined
behaviour, and the compiler does not know that the wgmma is still running, so nothing else
catches them without a GPU (on a GPU they show as garbage outputs).

usage: ptx_wgmma_hazards.py FILE.ptx [FILE.ptx ...]   (an argument may also be a ;-separated list,
as CMake's $<TARGET_OBJECTS> gives it)

A forward data-flow pass over each kernel's control-flow graph tracks, per register a wgmma reads
as A or accumulates into, how many commit_groups have been issued since its group was committed;
wait_group N retires the groups older than the newest N. The script first checks itself on small
kernels: one writes an A register across a loop's back edge, one scales an accumulator before
the wait, one is clean."""
import re
import sys

LABEL = re.compile(r"^(\$L__\w+):")
BRANCH = re.compile(r"^(@!?%p\d+\s+)?bra(\.uni)?\s+(\$L__\w+)$")
RS_WGMMA = re.compile(r"^wgmma\.mma_async\S*\s+\{[^}]*\},\s*\{([^}]*)\}")
WAIT = re.compile(r"^wgmma\.wait_group\.sync\.aligned\s+(\d+)$")
NO_DEST = ("st.", "bar", "barrier", "wgmma.", "red.", "prefetch", "cp.", "mbarrier.arrive", "fence", "membar",
           "ret", "exit", "bra", "trap", "griddepcontrol", "setmaxnreg", "elect", "@")
MAX_AGE = 8


def statements(body):
    """Yields the kernel body's statements, one per PTX instruction or label."""
    for raw in body.split("\n"):
        line = raw.split("//")[0].strip()
        if not line or line.startswith("."):
            continue
        m = LABEL.match(line)
        if m:
            yield ("label", m.group(1))
            line = line[m.end():].strip()
            if not line:
                continue
        for part in line.split(";"):
            part = part.strip().strip("{}").strip()
            if part:
                yield ("ins", part)


def dests(ins):
    """Registers an instruction writes (its first operand, or the braced vector there)."""
    body = re.sub(r"^@!?%p\d+\s+", "", ins)
    if body.startswith(NO_DEST):
        return []
    m = re.match(r"^[a-z][\w.:]*\s+(\{[^}]*\}|%r\d+)", body)
    if not m:
        return []
    return re.findall(r"%r\d+", m.group(1))


def check_kernel(body):
    """Returns (number of RS wgmmas, list of hazards as (instruction index, instruction))."""
    stmts = list(statements(body))
    # Basic blocks: a block starts at a label or after a branch.
    blocks, cur, label_block = [], [], {}
    for kind, val in stmts:
        if kind == "label":
            if cur:
                blocks.append(cur)
            cur = []
            label_block[val] = len(blocks)
            cur.append((kind, val))
            continue
        cur.append((kind, val))
        if BRANCH.match(val) or val in ("ret", "exit"):
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    succ = []
    for i, b in enumerate(blocks):
        last = b[-1][1] if b[-1][0] == "ins" else ""
        m = BRANCH.match(last)
        s = []
        if m:
            s.append(label_block[m.group(3)])
            if m.group(1):  # conditional: falls through too
                s.append(i + 1)
        elif last not in ("ret", "exit"):
            s.append(i + 1)
        succ.append([x for x in s if x < len(blocks)])
    n_rs = sum(1 for _, v in stmts if RS_WGMMA.match(v))

    def transfer(state, block, hazards):
        # (kind, reg) -> commit groups since its group was committed (-1: not committed yet);
        # kind "a": read by a wgmma as its A operand, "c": a wgmma accumulator. Where paths
        # merge, the youngest age wins (it stays pending longest).
        pending = {}
        for key, age in state:
            pending[key] = min(pending.get(key, MAX_AGE), age)
        for idx, (kind, ins) in enumerate(block):
            if kind != "ins":
                continue
            if ins.startswith("wgmma.mma_async"):
                m = RS_WGMMA.match(ins)
                if m:
                    for r in re.findall(r"%r\d+", m.group(1)):
                        pending[("a", r)] = -1
                acc = re.match(r"^wgmma\.mma_async\S*\s+\{([^}]*)\}", ins)
                if acc:
                    for r in re.findall(r"%[rf]\d+", acc.group(1)):
                        pending[("c", r)] = -1
                continue
            if ins.startswith("wgmma.commit_group"):
                pending = {k: min(a + 1, MAX_AGE) for k, a in pending.items()}
                continue
            m = WAIT.match(ins)
            if m:
                n = int(m.group(1))
                pending = {k: a for k, a in pending.items() if a < n}
                continue
            if hazards is not None:
                for r in dests(ins):
                    if ("a", r) in pending:
                        hazards.append((id(block), idx, "writes a pending A register: " + ins))
                for r in re.findall(r"%[rf]\d+", re.sub(r"^@!?%p\d+\s+", "", ins)):
                    if ("c", r) in pending:
                        hazards.append((id(block), idx, "touches a pending accumulator: " + ins))
                        break
        return frozenset(pending.items())

    entry_state = [None] * len(blocks)
    entry_state[0] = frozenset()
    work = [0]
    while work:
        i = work.pop()
        out = transfer(entry_state[i], blocks[i], None)
        for s in succ[i]:
            merged = out if entry_state[s] is None else entry_state[s] | out
            if merged != entry_state[s]:
                entry_state[s] = merged
                work.append(s)
    hazards = []
    for i, b in enumerate(blocks):
        if entry_state[i] is not None:
            transfer(entry_state[i], b, hazards)
    return n_rs, sorted({(h[1], h[2]) for h in hazards})


def kernels(ptx):
    starts = [m for m in re.finditer(r"^(\.visible\s+)?\.entry\s+(\S+?)\(", ptx, re.M)]
    for k, m in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(ptx)
        yield m.group(2), ptx[m.end():end]


SELF_BAD = """
.entry bad(
{
	mov.u32 %r1, 0;
$L__BB0_1:
	cvt.rn.bf16x2.f32 %r1, %f1, %f2;
	wgmma.wait_group.sync.aligned 0;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f3, %f4}, {%r1, %r2, %r3, %r4}, %rd1, p, 1, 1, 1;
	wgmma.commit_group.sync.aligned;
	@%p1 bra $L__BB0_1;
	ret;
}
"""
SELF_BAD_ACC = """
.entry bad_acc(
{
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f3, %f4}, %rd2, %rd3, p, 1, 1, 0, 0;
	wgmma.commit_group.sync.aligned;
	mul.f32 %f3, %f3, %f9;
	wgmma.wait_group.sync.aligned 0;
	ret;
}
"""
SELF_GOOD = """
.entry good(
{
	mov.u32 %r1, 0;
$L__BB0_1:
	cvt.rn.bf16x2.f32 %r5, %f1, %f2;
	wgmma.wait_group.sync.aligned 0;
	mov.u32 %r1, %r5;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f3, %f4}, {%r1, %r2, %r3, %r4}, %rd1, p, 1, 1, 1;
	wgmma.commit_group.sync.aligned;
	wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f5, %f6}, %rd2, %rd3, p, 1, 1, 0, 0;
	wgmma.commit_group.sync.aligned;
	wgmma.wait_group.sync.aligned 1;
	mov.u32 %r6, %r1;
	@%p1 bra $L__BB0_1;
	ret;
}
"""


def main(paths):
    (_, bad), = kernels(SELF_BAD)
    (_, bad_acc), = kernels(SELF_BAD_ACC)
    (_, good), = kernels(SELF_GOOD)
    if not check_kernel(bad)[1] or not check_kernel(bad_acc)[1] or check_kernel(good)[1]:
        print("self-check failed: the checker misses a known hazard or flags a clean kernel")
        return 1
    if not paths:
        print(__doc__)
        return 2
    rc, checked = 0, 0
    for path in [p for arg in paths for p in arg.split(";") if p]:
        ptx = open(path).read()
        for name, body in kernels(ptx):
            n_rs, hz = check_kernel(body)
            if n_rs == 0:
                continue
            checked += 1
            status = "ok" if not hz else f"{len(hz)} hazard(s)"
            print(f"{status:>12}  {n_rs:3d} register-A wgmmas  {name}")
            for idx, what in hz[:5]:
                print(f"              {what}")
            if hz:
                rc = 1
    if checked == 0:
        print("no kernel with register-A wgmmas found: wrong file?")
        return 1
    print("PASS" if rc == 0 else "FAIL")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
