"""Copies csrc/'s CUDA sources for the emulator build, rewriting every kernel launch
`kernel<<<grid, block, smem, stream>>>(args)` into
`::emu::launch(::emu::Config(grid, block, smem, stream), [&] { kernel(args); })` (see
cuda_runtime.h), the one thing in them a host C++ compiler cannot read.

    python rewrite_launches.py SRC_DIR DST_DIR      (the csrc folder; writes only changed files)

Every .cu becomes DST_DIR/<same path>.cpp, every .cuh is rewritten in place of the original under
DST_DIR, and every other file is copied, so relative #includes resolve as in csrc/.
"""
import sys
from pathlib import Path


def _match_back(text, end, open_ch, close_ch):
    """Index of the bracket opening the one that closes at text[end]."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced brackets before a launch")


def _match_forward(text, start, open_ch, close_ch):
    """Index just past the bracket closing the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced brackets after a launch")


def rewrite(text, where="<text>"):
    out, pos = [], 0
    while True:
        at = text.find("<<<", pos)
        if at < 0:
            out.append(text[pos:])
            return "".join(out)
        if "//" in text[text.rfind("\n", 0, at) + 1:at]:  # in a comment
            out.append(text[pos:at + 3])
            pos = at + 3
            continue
        # the kernel: an identifier (with ::) and optional template arguments, before <<<
        i = at
        while i > 0 and text[i - 1].isspace():
            i -= 1
        if text[i - 1] == ">":
            i = _match_back(text, i - 1, "<", ">")
        while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
            i -= 1
        kernel = text[i:at].strip()
        close = text.find(">>>", at)
        config = text[at + 3:close]
        j = close + 3
        while text[j].isspace():
            j += 1
        if text[j] != "(":
            raise ValueError(f"{where}: a launch of {kernel} without arguments")
        end = _match_forward(text, j, "(", ")")
        args = text[j:end]
        out.append(text[pos:i])
        out.append(f"::emu::launch(::emu::Config({config}), [&] {{ {kernel}{args}; }})")
        pos = end


def main(src, dst):
    src, dst = Path(src), Path(dst)
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        text = path.read_text()
        if path.suffix in (".cu", ".cuh"):
            text = rewrite(text, str(rel))
        target = dst / (str(rel) + ".cpp" if path.suffix == ".cu" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)


if __name__ == "__main__":
    main(*sys.argv[1:])
