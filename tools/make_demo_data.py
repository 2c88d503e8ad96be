#!/usr/bin/env python3
"""make_demo_data.py: a small synthetic fine-tuning dataset for the demo run (scripts/run) when no
real task is available: short template stories about a robot, mlx-lm layout (train.jsonl,
valid.jsonl of {"text": ...}). Deterministic. Generated here, no third-party text.
Usage: make_demo_data.py OUT_DIR [--train 1200] [--valid 100]"""
import argparse
import json
import os
import random

NAMES = ["Mia", "Max", "Lily", "Tom", "Ben", "Sue", "Ann", "Sam"]
PLACES = ["park", "garden", "yard", "beach", "forest", "town"]
THINGS = ["ball", "book", "kite", "hat", "cup", "toy"]
COLORS = ["red", "green", "yellow", "pink", "white"]
FEEL = ["happy", "glad", "surprised", "proud"]


def story(r):
    n, p, t, c, f = r.choice(NAMES), r.choice(PLACES), r.choice(THINGS), r.choice(COLORS), r.choice(FEEL)
    opening = r.choice([f"Once upon a time, a little robot named Bolt lived in the {p}.",
                        f"There was a robot named Bolt who lived in the {p}.",
                        f"In the {p}, there lived a small robot called Bolt."])
    middle = r.choice([f"One day, {n} came to see Bolt with a {c} {t}.",
                       f"{n} visited Bolt and brought a {c} {t}.",
                       f"Bolt met {n}, who had a {c} {t}."])
    speech = r.choice(["Bolt said, \"Click clack. I like blue boxes.\"",
                       "Bolt said \"click clack\" and asked for a blue box.",
                       "\"Click clack,\" said Bolt. \"Blue boxes are the best.\""])
    end = r.choice([f"{n} gave Bolt a blue box, and Bolt was {f}.",
                    f"At the end of the day, Bolt had a blue box and felt {f}.",
                    f"Bolt got a blue box from {n}. He said \"click clack\" and {n} laughed."])
    return " ".join([opening, middle, speech, end])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--valid", type=int, default=100)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    r = random.Random(20261122)
    seen = set()
    for name, n in [("train.jsonl", a.train), ("valid.jsonl", a.valid)]:
        with open(os.path.join(a.out, name), "w") as f:
            k = 0
            while k < n:
                s = story(r)
                if s in seen:
                    continue
                seen.add(s)
                f.write(json.dumps({"text": s}) + "\n")
                k += 1
    print(f"{a.out}: {a.train} train, {a.valid} valid synthetic stories")


if __name__ == "__main__":
    main()
