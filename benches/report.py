#!/usr/bin/env python3
"""Overheads and target ratios from the last `cargo bench --bench overhead` run.

Reads criterion's medians from target/criterion and prints Markdown: every
scenario's median, its overhead over the bare router, and each target of
issue #4 as a ratio computed from this one run.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median(group, name):
    path = ROOT / group / name / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except FileNotFoundError:
        sys.exit(f"missing {path}: run `cargo bench --bench overhead` first")


def main():
    names = [
        "bare",
        "noop_layer",
        "tower_sessions_no_cookie",
        "tower_sessions_read",
        "tower_sessions_write",
        "ours_no_cookie",
        "ours_read_1_keys",
        "ours_read_2_keys",
        "ours_read_3_keys",
        "ours_read_5_keys",
        "ours_touch",
        "ours_rotate_and_confirm",
        "ours_login",
        "ours_read_with_sessions_1000",
        "ours_read_with_sessions_100000",
        "ours_read_with_sessions_1000000",
    ]
    t = {n: median("request", n) for n in names}
    bare = t["bare"]
    over = {n: t[n] - bare for n in names}
    # Two requests per iteration: the rotation, then the confirmation.
    over["ours_rotate_and_confirm"] = t["ours_rotate_and_confirm"] - 2 * bare
    print("| scenario | median (ns) | overhead over bare (ns) |")
    print("|---|---:|---:|")
    for n in names:
        print(f"| {n} | {t[n]:.0f} | {over[n]:.0f} |")
    parse = median("micro", "secret_parse")
    hmac = median("micro", "candidate_derivation")
    print(f"| micro: secret parse | {parse:.1f} | |")
    print(f"| micro: one candidate derivation (HMAC) | {hmac:.1f} | |")
    hmac_v1 = median("micro", "candidate_derivation_v1_tag")
    print(f"| micro: the same with the first version's 37-byte tag (hmac crate) | {hmac_v1:.1f} | |")

    def row(target, value, limit):
        verdict = "met" if value <= limit else "MISSED"
        print(f"| {target} | {value:.3f} | ≤ {limit} | {verdict} |")

    print()
    print("| target | measured | limit | |")
    print("|---|---:|---:|---|")
    row("read, 2 keys ÷ tower-sessions read (overheads)",
        over["ours_read_2_keys"] / over["tower_sessions_read"], 0.25)
    row("no cookie ÷ tower-sessions no cookie (overheads)",
        over["ours_no_cookie"] / over["tower_sessions_no_cookie"], 0.1)
    row("rotation cycle per request (rotate + confirm, halved) ÷ tower-sessions write (overheads)",
        over["ours_rotate_and_confirm"] / 2 / over["tower_sessions_write"], 0.5)
    row("touch ÷ tower-sessions write (overheads)",
        over["ours_touch"] / over["tower_sessions_write"], 0.5)
    extra = [
        (t["ours_read_2_keys"] - t["ours_read_1_keys"]),
        (t["ours_read_3_keys"] - t["ours_read_2_keys"]),
        (t["ours_read_5_keys"] - t["ours_read_3_keys"]) / 2,
    ]
    row("cost of one extra key version ÷ one HMAC (mean of 1→2, 2→3, 3→5)",
        sum(extra) / len(extra) / hmac, 1.2)
    row("lookup-key derivation ÷ the first version's (ths/v1/lookup tag)",
        hmac / hmac_v1, 0.8)
    row("read with 10^6 sessions ÷ read with 10^3 (medians)",
        t["ours_read_with_sessions_1000000"] / t["ours_read_with_sessions_1000"], 1.1)


if __name__ == "__main__":
    main()
