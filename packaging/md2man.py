#!/usr/bin/python3
"""Convert one of orch's Markdown docs into a man page (roff), e.g. docs/units.md -> orch.unit(5).

    md2man.py INPUT.md NAME SECTION "one-line description" > NAME.SECTION

Handles the subset the docs use: headings, paragraphs, fenced code, pipe tables (each row becomes
a tagged paragraph: the first cell is the tag, the other cells follow with their column names),
bullet and numbered lists, `code`, **bold**, *emphasis* and [links](target). The first `#`
heading is the title and is dropped. Anything else passes through as text. Only the Python 3
standard library: it runs at package build time (packaging/gen.sh).
"""
import re
import sys


def esc(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # Non-ASCII as named glyphs, so plain `groff -man` renders it without preconv.
    return "".join(ch if ord(ch) < 128 else "\\[u%04X]" % ord(ch) for ch in text)


def inline(text):
    """Markdown inline markup to roff fonts; text outside code spans is escaped."""
    out = []
    # Code spans first: nothing inside them is markup.
    pos = 0
    for m in re.finditer(r"(`+)(.+?)\1", text):
        out.append(plain(text[pos:m.start()]))
        out.append("\\fB" + esc(m.group(2).strip()) + "\\fR")
        pos = m.end()
    out.append(plain(text[pos:]))
    line = "".join(out)
    if line.startswith(".") or line.startswith("'"):
        line = "\\&" + line
    return line


def plain(text):
    # Links: keep the text; an external URL is kept in angle brackets.
    def link(m):
        label, target = m.group(1), m.group(2)
        if target.startswith("http"):
            return f"{label} <{target}>"
        return label

    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", link, text)
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\\fI\1\\fR", text)
    text = re.sub(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)", r"\\fI\1\\fR", text)
    return text


def split_row(line):
    cells = []
    cur = ""
    in_code = False
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    for ch in body:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return [c.replace("\\|", "|") for c in cells]


def convert(md, name, section, description):
    lines = md.splitlines()
    out = [
        f'.TH {name.upper()} {section} "" "orch" "File Formats"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(description)}",
    ]
    para = []
    started = False  # before the first ## heading, text goes into DESCRIPTION

    def flush():
        if para:
            out.append(".PP")
            out.append(inline(" ".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            i += 1
            out.append(".PP")
            out.append(".RS 4")
            out.append(".nf")
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code = esc(lines[i])
                if code.startswith(".") or code.startswith("'"):
                    code = "\\&" + code
                out.append(code)
                i += 1
            out.append(".fi")
            out.append(".RE")
            i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            flush()
            level, title = len(m.group(1)), m.group(2).strip()
            if level == 1:
                if not started:
                    out.append(".SH DESCRIPTION")
                    started = True
            elif level == 2:
                started = True
                out.append(".SH " + inline(title.upper()))
            else:
                out.append(".SS " + inline(title))
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            header = split_row(stripped)
            i += 1
            if i < len(lines) and re.match(r"^\s*\|?\s*:?-+", lines[i]):
                i += 1
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = split_row(lines[i])
                i += 1
                out.append(".TP")
                out.append(inline(cells[0]) if cells else "")
                middle = [
                    f"{header[k]}: {cells[k]}"
                    for k in range(1, len(cells) - 1)
                    if k < len(header) and cells[k]
                ]
                if middle:
                    out.append(inline("; ".join(middle) + "."))
                    out.append(".br")
                if len(cells) > 1:
                    out.append(inline(cells[-1]))
            continue
        m = re.match(r"^(\s*)([-*+]|\d+\.)\s+(.*)$", line)
        if m:
            flush()
            bullet = "\\(bu" if not m.group(2)[0].isdigit() else m.group(2)
            item = [m.group(3)]
            i += 1
            while (
                i < len(lines)
                and lines[i].strip()
                and not re.match(r"^\s*([-*+]|\d+\.)\s+", lines[i])
                and not lines[i].strip().startswith(("```", "|", "#"))
            ):
                item.append(lines[i].strip())
                i += 1
            out.append(f".IP {bullet} 4")
            out.append(inline(" ".join(item)))
            continue
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith(">"):
            stripped = stripped.lstrip("> ")
        para.append(stripped)
        i += 1
    flush()
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        sys.exit(2)
    path, name, section, description = sys.argv[1:]
    with open(path, encoding="utf-8") as f:
        md = f.read()
    sys.stdout.write(convert(md, name, section, description))


if __name__ == "__main__":
    main()
