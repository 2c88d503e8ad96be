#!/usr/bin/env python3
"""Write tests/data/tokenizer_corpus.jsonl: a deterministic tokenizer test corpus.

Each line is one JSON string (so entries can hold newlines, CRs and tabs). It mixes ASCII prose
with contractions, code, numbers of every length, runs of spaces/tabs/newlines, CJK, Cyrillic,
Arabic, Devanagari, emoji (ZWJ sequences, flags, skin tones) and other 4-byte UTF-8, combining
marks (decomposed forms that NFC changes), odd spaces (NBSP, U+200A, U+3000), and literal
special-token strings of the supported models. Rerunning gives identical bytes.
Usage: python3 tools/make_tokenizer_corpus.py [--out tests/data/tokenizer_corpus.jsonl] [--n 2400]
"""
import argparse
import json
import random

WORDS = ("the of and to in is was that for it with as his on be at by had are but from or have an "
         "they which one you were her all she there would their we him been has when who will more "
         "no if out so said what up its about into than them can only other new some could time "
         "these two may then do first any my now such like our over man me even most made after "
         "also did many before must through back years where much your way well down should "
         "because each just those people Mr how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know "
         "while last might us great old year off come since against go came right used take "
         "three tokenizer streaming dataset gradient transformer Llama Qwen Gemma naïve café "
         "résumé coöperate façade Zürich São Paulo Kraków").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ll", "n't"]
PUNCT = list(".,;:!?") + ["...", "—", "–", "…", "«", "»", "“", "”", "‘", "’", "(", ")", "[", "]"]
CJK = ["你好，世界！", "我们今天去公园散步。", "机器学习模型需要大量数据。", "東京は日本の首都です。",
       "こんにちは、元気ですか？", "カタカナとひらがな", "안녕하세요, 반갑습니다.", "한국어 텍스트 처리",
       "繁體中文測試：龍、鬱、灣", "数字１２３と全角ＡＢＣ"]
OTHER = ["Привет, как дела? Всё хорошо.", "Ελληνικά γράμματα αβγ", "مرحبا بالعالم", "שלום עולם",
         "नमस्ते दुनिया, यह परीक्षण है", "ภาษาไทยไม่มีช่องว่าง", "Tiếng Việt có dấu: ắ ặ ở ữ",
         "Ağaç ışık İstanbul", "Straße Maß Größe", "ﬁ ﬂ ligatures ½ ² ™ Ⅻ"]
EMOJI = ["😀", "🚀", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "🏳️‍🌈", "🤖", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
         "𠀀𠀁", "𝟘𝟙𝟚", "🧑🏿‍🔬", "☕", "✅", "🎉🎉🎉"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "A\u030a", "\u1100\u1161\u11a8",
             "Cafe\u0301", "i\u0307", "u\u0308ber"]
SPACES = ["\u00a0", "\u200a", "\u2009", "\u3000", "\u200b", "\ufeff", "\u2028", "\u0085"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>",
            "<unk>", "<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<think>",
            "</think>", "<tool_call>", "[INST]", "[/INST]", "<|im_sta", "<|eot_id", "< s>"]
CODE = [
    "def f(x):\n    return x * 2  # double\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}\n",
    "const y = arr.map((v) => v ** 2).filter(Boolean);",
    "if __name__ == \"__main__\":\n    main()\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "    \t  x = {'a': 1, \"b\": [2, 3]}  \n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "<div class=\"row\"><span>&nbsp;&amp;</span></div>",
    "$ ls -la | grep '\\.py$' && echo done\r\n",
    "matrix[i][j] += alpha*beta/(gamma-1e-9);",
    "git commit -m 'Fix: off-by-one in tokenizer' --no-verify",
]


def number(rng):
    kind = rng.randrange(6)
    length = rng.randint(1, 30)
    digits = "".join(rng.choice("0123456789") for _ in range(length))
    if kind == 0:
        return digits
    if kind == 1:
        return "-" + digits
    if kind == 2:
        return digits[: max(1, length // 2)] + "." + digits[length // 2:]
    if kind == 3:
        return "{:,}".format(int(digits))
    if kind == 4:
        return digits + "%"
    return "$" + digits[:6] + ".99"


def sentence(rng):
    n = rng.randint(3, 18)
    out = []
    for i in range(n):
        w = rng.choice(WORDS)
        if i == 0 or rng.random() < 0.08:
            w = w.capitalize()
        if rng.random() < 0.05:
            w = w.upper()
        if rng.random() < 0.07:
            w += rng.choice(CONTRACTIONS)
        if rng.random() < 0.08:
            w = number(rng)
        out.append(w)
        if rng.random() < 0.12:
            out[-1] += rng.choice(PUNCT)
    return " ".join(out) + rng.choice([".", "!", "?", "", "..."])


def whitespace(rng):
    return "".join(rng.choice([" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "        "])
                   for _ in range(rng.randint(1, 5)))


def line(rng, i):
    kind = i % 12
    if kind == 0:
        return sentence(rng)
    if kind == 1:
        return sentence(rng) + whitespace(rng) + sentence(rng)
    if kind == 2:
        return rng.choice(CODE)
    if kind == 3:
        return " ".join(number(rng) for _ in range(rng.randint(1, 6)))
    if kind == 4:
        return whitespace(rng) + sentence(rng) + whitespace(rng)
    if kind == 5:
        return rng.choice(CJK) + rng.choice(["", " ", "\n"]) + rng.choice(CJK)
    if kind == 6:
        return rng.choice(OTHER) + " " + rng.choice(EMOJI) + rng.choice(EMOJI)
    if kind == 7:
        return rng.choice(SPECIALS) + sentence(rng) + rng.choice(SPECIALS) + rng.choice(["", " ", "\n"])
    if kind == 8:
        return " ".join(rng.choice(COMBINING) for _ in range(3)) + rng.choice(SPACES) + sentence(rng)
    if kind == 9:
        parts = [rng.choice(WORDS), rng.choice(EMOJI), rng.choice(SPACES), number(rng),
                 rng.choice(CJK), rng.choice(SPECIALS), rng.choice(CODE), whitespace(rng)]
        rng.shuffle(parts)
        return "".join(parts)
    if kind == 10:
        return "".join(rng.choice(" \t\n") for _ in range(rng.randint(1, 12)))
    return rng.choice(SPECIALS) + rng.choice(SPECIALS) + " " + rng.choice(SPECIALS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/tokenizer_corpus.jsonl")
    ap.add_argument("--n", type=int, default=2400)
    a = ap.parse_args()
    rng = random.Random(20261122)
    fixed = ["", " ", "  ", "a", "Hello world", "Hello  world", " Hello", "Hello ", "\n", "\r\n",
             "\t", "12345678901234567890", "I'm here, you're there; it's 3:45pm.", "ÀÉÎÕÜ",
             "🤖🤖", "<s>", "<s> hi", "hi<s>", "<|im_start|>user\nhi<|im_end|>"]
    with open(a.out, "w", encoding="utf-8") as f:
        for s in fixed:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
        for i in range(a.n - len(fixed)):
            f.write(json.dumps(line(rng, i), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
