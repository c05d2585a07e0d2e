"""Calibrate and measure answer verification on ClapNQ dev (../shared/data/eval/clapnq).

Each of the 100 answerable records has a question, a passage and a human answer. Checked against its own
passage, the human answer should come out `supported`; checked against another record's passage, `unsupported`.

    python bench/verify_calibration.py [--no-embed] [--grid]

Prints, for the verifier as configured (DEFAULT_THRESHOLDS) and for a grid of thresholds:
- balanced accuracy (strict: positive = verdict "supported"; a negative is right unless "supported"),
- the same with "partial" counted as supported (lenient),
- against two kinds of negatives: a rotated record's passage (easy) and the most similar other passage by
  embedding (hard: same-ish topic),
and the per-sentence score distributions. The thresholds are chosen on the first half of the records (by id
order) and reported on the second half too, so the choice is not fitted to what it is judged on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CLAPNQ = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "eval" / "clapnq"

from ctxqa.rag.verify.verifier import DEFAULT_THRESHOLDS, Passage, Thresholds, Verifier, verdict  # noqa: E402


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def load() -> list[dict]:
    rows = [json.loads(line) for line in (CLAPNQ / "answerable.dev100.jsonl").open()]
    return sorted(rows, key=lambda r: r["id"])


def balanced(pos: list[str], neg: list[str], lenient: bool) -> float:
    ok = {"supported", "partial"} if lenient else {"supported"}
    tpr = sum(v in ok for v in pos) / len(pos)
    tnr = sum(v not in ok for v in neg) / len(neg)
    return (tpr + tnr) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-embed", action="store_true", help="lexical signals only")
    ap.add_argument("--grid", action="store_true", help="also search the thresholds")
    args = ap.parse_args()
    rows = load()
    embed = None
    if not args.no_embed:
        from ctxqa.rag.config import Settings
        from ctxqa.rag.embed.embedder import Embedder

        e = Embedder.from_settings(Settings())  # the default backend, as ctxqa serves
        embed = e.encode
        pv = e.encode([r["passages"][0]["text"] for r in rows])
        sim = pv @ pv.T
        np.fill_diagonal(sim, -1)
        hard = sim.argmax(1).tolist()
    else:
        hard = [(i + 7) % len(rows) for i in range(len(rows))]
    easy = [(i + 1) % len(rows) for i in range(len(rows))]
    v = Verifier(embed)
    perturbed = 0
    caught = 0
    t0 = time.perf_counter()
    checks: dict[str, list] = {"pos": [], "easy": [], "hard": []}
    for i, r in enumerate(rows):
        answer = r["output"][0]["answer"]
        for kind, j in (("pos", i), ("easy", easy[i]), ("hard", hard[i])):
            res = v.verify(answer, [Passage(rows[j]["passages"][0]["text"], 0)])
            checks[kind].append(res)
        # A fact changed: every number of the answer off by one, against its own passage. The answer must no
        # longer come out supported.
        changed = re.sub(r"\d+", lambda m: str(int(m.group(0)) + 1), answer)
        if changed != answer:
            perturbed += 1
            caught += v.verify(changed, [Passage(r["passages"][0]["text"], 0)]).grounding != "supported"
    elapsed = time.perf_counter() - t0
    n_checks = 3 * len(rows)
    print(f"cpu: {cpu()} ({os.cpu_count()} cores); embedder: {'yes' if embed else 'no'}; "
          f"{n_checks} verifications in {elapsed:.1f}s ({1000 * elapsed / n_checks:.1f} ms each)")

    def report(th: Thresholds, idx: list[int], label: str) -> dict[str, float]:
        vv = Verifier(None, th)
        out = {}
        for neg in ("easy", "hard"):
            pos_v = [verdict([vv.label(s.score) if s.label != "neutral" else "neutral" for s in checks["pos"][i].sentences]) for i in idx]
            neg_v = [verdict([vv.label(s.score) if s.label != "neutral" else "neutral" for s in checks[neg][i].sentences]) for i in idx]
            out[f"{neg}_strict"] = balanced(pos_v, neg_v, False)
            out[f"{neg}_lenient"] = balanced(pos_v, neg_v, True)
        print(f"{label:>34}: supported>={th.supported:.2f} partial>={th.partial:.2f} | balanced accuracy "
              f"easy {out['easy_strict']:.3f} (lenient {out['easy_lenient']:.3f}) · hard {out['hard_strict']:.3f} "
              f"(lenient {out['hard_lenient']:.3f})")
        return out

    if perturbed:
        print(f"answers with a number changed (against their own passage): {caught} of {perturbed} no longer "
              f"supported ({100 * caught / perturbed:.0f} %)")
    everyone = list(range(len(rows)))
    half = len(rows) // 2
    report(DEFAULT_THRESHOLDS, everyone, "default, all 100")
    report(DEFAULT_THRESHOLDS, everyone[half:], "default, held-out half")
    for kind in ("pos", "easy", "hard"):
        scores = [s.score for res in checks[kind] for s in res.sentences if s.label != "neutral"]
        q = np.percentile(scores, [5, 25, 50, 75, 95])
        print(f"sentence scores {kind:>4}: n={len(scores)} p5 {q[0]:.2f} p25 {q[1]:.2f} p50 {q[2]:.2f} "
              f"p75 {q[3]:.2f} p95 {q[4]:.2f}")
    if args.grid:
        best = None
        for sup in np.arange(0.30, 0.86, 0.05):
            for part in np.arange(0.20, sup + 0.001, 0.05):
                th = Thresholds(round(float(sup), 2), round(float(part), 2))
                vv = Verifier(None, th)
                idx = everyone[:half]
                pos_v = [verdict([vv.label(s.score) if s.label != "neutral" else "neutral" for s in checks["pos"][i].sentences]) for i in idx]
                neg_v = [verdict([vv.label(s.score) if s.label != "neutral" else "neutral" for s in checks["hard"][i].sentences]) for i in idx]
                ba = balanced(pos_v, neg_v, False)
                if best is None or ba > best[0] + 1e-9:
                    best = (ba, th)
        assert best is not None
        print(f"best on the tuning half (hard negatives, strict): {best[0]:.3f} at {best[1]}")
        report(best[1], everyone[half:], "grid best, held-out half")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
