#!/usr/bin/env python3
"""Writes the benchmark report from the raw tables that bench/run captured.

    bench/report.py [--raw DIR] [--out DIR]     (default bench/report/raw, bench/report)

Reads DIR/<name>.md (a benchmark's stdout: a caption, a Markdown table, maybe a few
lines after it), DIR/<name>.failed (exit status and log tail of a benchmark that failed)
and DIR/<name>.meta (command, mode, duration, date, commit), whichever are present, and
writes OUT/README.md and one horizontal bar chart per benchmark, OUT/<name>.png, with
the ceiling or baseline measured in the same run drawn next to Crossway's figures.

matplotlib comes from a venv at ~/.cache/crossway-tools/bench-venv, made on first use;
without it the report is written without plots.
"""
import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VENV = pathlib.Path.home() / ".cache" / "crossway-tools" / "bench-venv"
REEXEC = "CROSSWAY_BENCH_REPORT_REEXEC"


def log(msg):
    print(f"report.py: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- matplotlib bootstrap

def ensure_matplotlib():
    """Imports matplotlib (Agg); if missing, re-executes this script in the bench venv
    (made, with matplotlib, on first use). Returns pyplot or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        pass
    if os.environ.get(REEXEC):
        log("matplotlib is not importable even in the venv; writing the report without plots")
        return None
    python = VENV / "bin" / "python3"
    try:
        if not python.exists():
            log(f"creating {VENV}")
            VENV.parent.mkdir(parents=True, exist_ok=True)
            if subprocess.run([sys.executable, "-m", "venv", str(VENV)], stdout=sys.stderr).returncode != 0:
                log("python3 -m venv failed; installing python3-venv")
                sudo = [] if os.geteuid() == 0 else ["sudo"]
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                subprocess.run(sudo + ["apt-get", "update", "-qq"], stdout=sys.stderr, env=env)
                subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "python3-venv"], stdout=sys.stderr,
                               env=env, check=True)
                subprocess.run(["rm", "-rf", str(VENV)])
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], stdout=sys.stderr, check=True)
        if subprocess.run([str(python), "-c", "import matplotlib"], stderr=subprocess.DEVNULL).returncode != 0:
            log(f"installing matplotlib into {VENV}")
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "matplotlib"],
                           stdout=sys.stderr, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"could not set up {VENV} ({e}); writing the report without plots")
        return None
    os.environ[REEXEC] = "1"
    os.execv(str(python), [str(python), str(pathlib.Path(__file__).resolve())] + sys.argv[1:])


# ---------------------------------------------------------------- Markdown tables

class Table:
    def __init__(self, header, rows, lines):
        self.header = header
        self.rows = rows
        self.lines = lines  # as printed

    def col(self, pattern):
        """Index of the first column whose header matches pattern (regex, case-insensitive)."""
        for i, h in enumerate(self.header):
            if re.search(pattern, h, re.I):
                return i
        return None


def split_cells(line):
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def is_separator(line):
    cells = split_cells(line)
    return bool(cells) and all(re.fullmatch(r":?-{1,}:?", c.replace(" ", "")) for c in cells)


def parse_markdown(text):
    """Returns (tables, caption, footer): the Markdown tables in text, the line just before
    the first table (the benchmarks print one caption line) and the lines after the last."""
    lines = text.splitlines()
    tables, spans = [], []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("|") and i + 1 < len(lines) and is_separator(lines[i + 1]):
            header = split_cells(lines[i])
            rows, j = [], i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                cells = split_cells(lines[j])
                cells += [""] * (len(header) - len(cells))
                rows.append(cells[:len(header)])
                j += 1
            tables.append(Table(header, rows, [l.strip() for l in lines[i:j]]))
            spans.append((i, j))
            i = j
        else:
            i += 1
    if not tables:
        return [], "", [l for l in lines if l.strip()]
    before = [l.strip() for l in lines[:spans[0][0]] if l.strip()]
    caption = before[-1] if before else ""
    footer = [l.strip() for l in lines[spans[-1][1]:] if l.strip() and not l.strip().startswith("|")]
    return tables, caption, footer


def number(cell):
    """The number in a cell such as '12,345', '41.2%', '3.1×', '1,200 msg/s', '≥ 5 ✔';
    None if the cell is not a figure (text, 'failed: …', empty)."""
    s = cell.replace("\u202f", "").replace("\u00a0", "").replace("✔", "").replace("✘", "").strip()
    m = re.fullmatch(r"[~≈]?\s*([-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([^\d\s]*(?:/[^\d\s]+)?)", s)
    if not m:
        return None
    try:
        return float(m.group(1).replace(",", ""))
    except ValueError:
        return None


def leading_int(cell):
    m = re.match(r"\s*(\d[\d,]*)", cell)
    return int(m.group(1).replace(",", "")) if m else None


def figure_in_text(pattern, text):
    m = re.search(pattern, text, re.I)
    return number(m.group(1).rstrip(".,")) if m else None


# ---------------------------------------------------------------- what each benchmark prints
#
# value:    regex of the throughput column's header
# labels:   regexes of the columns that name a row (joined with " · ")
# unit:     the throughput's unit, for labels
# ref:      "ceiling" (Crossway should approach it) or "baseline" (Crossway should beat it)
# ref_row:  (column regex, cell regex) of the row that is the ceiling/baseline
# ref_text: regex on the whole output whose group 1 is the ceiling/baseline figure
# ref_ratio: column holding value/ref (as % or ×): the ref is recovered from it when the
#           figure is not in the text
# ref_for:  regex on a row's label: the rows the ceiling applies to (default: all)
# ours:     regex on a row's label: Crossway's rows; the others are baselines (hl7-parse)
# ref_short: how ratios name the ref ("21% of ceiling", "6.1× the fsync rate")
# log:      plot on a log scale (default: only when the figures span more than 1000×)
SPECS = {
    "hl7-parse": dict(
        title="HL7 v2 parser", value=r"msgs?/s", labels=[r"parser"], unit="msg/s",
        ref="baseline", ours=r"crossway", log=True,
        about="Crossway's HL7 v2 parser against the crates.io parsers and python-hl7 on the same "
              "messages (one core)."),
    "feeds-profile": dict(
        title="Feed onboarding profile", value=r"messages/s", labels=[r"run"], unit="msg/s",
        ref="baseline", ours=r"crossway",
        about="`crossway feeds profile` over a large capture of real corpus ADT messages on one "
              "core, against `grep -c ^MSH` over the same files (reading the bytes and finding "
              "the messages)."),
    "mllp": dict(
        title="HL7 v2 feeds over MLLP", value=r"messages?/s|msgs?/s", labels=[r"store", r"event", r"patients"], unit="msg/s",
        ref="baseline", ref_name="fsync rate of this disk", ref_short="the fsync rate", ref_unit="/s",
        ref_text=r"fsync rate[^:]*:\s*([\d,.]+)", ref_ratio=r"fsync",
        about="Senders each waiting for their ACK, every message committed before AA, against "
              "the disk's fsync rate (what one commit per message would allow)."),
    "fhir": dict(
        title="FHIR facade", value=r"req/s", labels=[r"store", r"workload"], unit="req/s",
        ref="ceiling", ref_name="trivial actix-web handler", ref_row=(r"store", r"^ceiling$"),
        ref_ratio=r"of ceiling",
        about="Referral transaction, Task read and Task search over HTTP, against a trivial "
              "actix-web handler on the same machine."),
    "cbo": dict(
        title="CBO API", value=r"req/s", labels=[r"store", r"workload"], unit="req/s",
        ref="ceiling", ref_name="trivial actix-web handler", ref_row=(r"store", r"^ceiling$"),
        ref_ratio=r"of ceiling", ref_for=r"^(?!.*open loop)", ref_scope="for the closed-loop rows",
        about="List, read, accept and a read/note mix on a seeded store (closed loop, c32), and "
              "accepts paced at the target rate (open loop), against a trivial actix-web handler "
              "on the same machine."),
    "identity": dict(
        title="Identity resolution", value=r"resolutions/s|/s", labels=[r"store", r"mode"],
        unit="res/s", ref="ceiling", ref_name="redis-benchmark GET",
        ref_text=r"redis-benchmark GET[^:]*:\s*([\d,.]+)", ref_for=r"redis", ref_scope="for the Redis rows",
        about="PIDs of three identifiers resolved from the in-process cache, Redis and the store; "
              "redis-benchmark GET is the ceiling for the Redis rows."),
    "webhooks": dict(
        title="Webhook delivery", value=r"deliveries/s|/s", labels=[r"store"], unit="deliveries/s",
        ref="ceiling", ref_name="webhook sink (wrk POST)", ref_unit=" req/s",
        ref_text=r"sink ceiling[^:]*:\s*([\d,.]+)", ref_ratio=r"of sink ceiling|ceiling",
        about="A backlog drained, signed, by one gateway's dispatchers to a local sink, against "
              "the sink's own ceiling."),
}
ORDER = list(SPECS)


def generic_spec(name, table):
    """For a raw table no spec describes: the first '…/s' column is the throughput, the
    text columns before it name a row, a row saying 'ceiling' or 'baseline' is the ref."""
    value = next((h for h in table.header if "/s" in h), table.header[-1])
    vi = table.header.index(value)
    labels = [re.escape(h) for h in table.header[:vi]
              if not any(number(r[table.header.index(h)]) is not None for r in table.rows)] or \
             [re.escape(table.header[0])]
    ref_kind = "ceiling"
    if any(re.search(r"baseline", c, re.I) for r in table.rows for c in r):
        ref_kind = "baseline"
    return dict(title=name, value=re.escape(value), labels=labels, unit=value,
                ref=ref_kind, ref_row=(r".", r"\b(ceiling|baseline)\b"), ref_name=ref_kind)


# ---------------------------------------------------------------- one benchmark's results

class Result:
    """A benchmark's parsed figures: rows of (label, value, cells), the reference figure."""

    def __init__(self, name, text, spec):
        self.name = name
        self.text = text
        tables, self.caption, self.footer = parse_markdown(text)
        self.table = tables[0] if tables else None
        self.extra_tables = tables[1:]
        self.spec = spec or (generic_spec(name, self.table) if self.table else dict(title=name))
        self.rows, self.failed_rows = [], []
        self.ref_value, self.ref_label = None, self.spec.get("ref_name", "reference")
        self.problem = None
        if not self.table:
            self.problem = "no Markdown table in the output"
            return
        t, s = self.table, self.spec
        vi = t.col(s["value"])
        if vi is None:
            self.problem = f"no throughput column matching {s['value']!r} in {t.header}"
            return
        self.value_header = t.header[vi]
        label_cols = [c for c in (t.col(p) for p in s["labels"]) if c is not None] or [0]
        ref_row = s.get("ref_row")
        ratio_col = t.col(s["ref_ratio"]) if s.get("ref_ratio") else None
        ratios = []
        for cells in t.rows:
            label = " · ".join(cells[c] for c in label_cols if cells[c])
            value = number(cells[vi])
            if ref_row:
                rc = t.col(ref_row[0])
                hits = [cells[rc]] if rc is not None else cells
                if any(re.search(ref_row[1], h, re.I) for h in hits):
                    if value is not None:
                        self.ref_value = value
                        workload = [cells[c] for c in label_cols[1:] if cells[c]]
                        if workload:
                            self.ref_label = workload[0]
                        elif not s.get("ref_name") or s.get("ref_name") == s.get("ref"):
                            self.ref_label = label
                    continue
            if value is None:
                said = [c for i, c in enumerate(cells) if c and i not in label_cols]
                self.failed_rows.append((label, said[0] if said else "no figure"))
                continue
            self.rows.append(dict(label=label, value=value, cells=cells))
            if ratio_col is not None and ratio_col != vi:
                r = number(cells[ratio_col])
                if r:
                    ratios.append(value / (r / 100 if "%" in cells[ratio_col] else r))
        if self.ref_value is None and s.get("ref_text"):
            self.ref_value = figure_in_text(s["ref_text"], text)
        if self.ref_value is None and ratios:
            self.ref_value = sum(ratios) / len(ratios)
        ours = s.get("ours")
        for r in self.rows:
            r["ours"] = bool(re.search(ours, r["label"], re.I)) if ours else True
            r["ref_applies"] = (self.ref_value is not None and
                                (not s.get("ref_for") or bool(re.search(s["ref_for"], r["label"], re.I))))
        self.targets_met = sum(c.count("✔") for r in t.rows for c in r)
        self.targets_missed = sum(c.count("✘") for r in t.rows for c in r)
        self.errors = []
        for h in (r"^errors?$", r"not AA"):
            ci = t.col(h)
            if ci is None:
                continue
            for r in self.rows:
                n = leading_int(r["cells"][ci])
                extra = "Socket_errors" in r["cells"][ci] or "Socket errors" in r["cells"][ci]
                if n or extra:
                    self.errors.append(f"{r['label']}: {t.header[ci]} {r['cells'][ci]}")

    # -- headline figures

    def ratio_text(self, value, ref):
        r = value / ref
        what = self.spec.get("ref_short") or self.spec.get("ref", "ceiling")
        if self.spec.get("ref") == "baseline" or r >= 1:
            return f"{times(r)} {what}"
        return f"{100 * r:.1f}% of {what}"

    def headlines(self):
        """Bullets: each Crossway row against the ceiling/baseline."""
        out = []
        unit = self.spec.get("unit", "")
        if self.spec.get("ours"):
            baselines = [r for r in self.rows if not r["ours"]]
            for r in (r for r in self.rows if r["ours"]):
                vs = ", ".join(f"{times(r['value'] / b['value'])} {b['label']}" for b in baselines if b["value"])
                out.append(f"**{r['label']}**: {fmt(r['value'])} {unit}" + (f" = {vs}" if vs else ""))
            return out
        for r in self.rows:
            line = f"**{r['label']}**: {fmt(r['value'])} {unit}"
            if r["ref_applies"]:
                line += f" = **{self.ratio_text(r['value'], self.ref_value)}**"
            out.append(line)
        if self.ref_value is not None:
            scope = ""
            if self.spec.get("ref_for"):
                scope = f" ({self.spec.get('ref_scope') or 'for the rows matching ' + self.spec['ref_for']})"
            ref_unit = self.spec.get("ref_unit", " " + unit)
            out.append(f"{self.spec.get('ref', 'ceiling')}: {self.ref_label}, {fmt(self.ref_value)}{ref_unit}{scope}")
        return out

    def summary(self):
        """One cell for the summary table."""
        unit = self.spec.get("unit", "")
        if self.spec.get("ours"):
            ours = [r for r in self.rows if r["ours"]]
            others = [r for r in self.rows if not r["ours"]]
            if not ours:
                return "no Crossway row"
            best = max(ours, key=lambda r: r["value"])
            text = f"{fmt(best['value'])} {unit}"
            if others:
                rival = max(others, key=lambda r: r["value"])
                slowest = min(others, key=lambda r: r["value"])
                text += f"; {times(best['value'] / rival['value'])} the best other ({rival['label']})"
                if slowest is not rival:
                    text += f", {times(best['value'] / slowest['value'])} {slowest['label']}"
            return text
        applied = [r for r in self.rows if r["ref_applies"]]
        if not applied:
            top = max(self.rows, key=lambda r: r["value"], default=None)
            return f"up to {fmt(top['value'])} {unit} (no {self.spec.get('ref', 'ceiling')} in the output)" if top else "—"
        lo = min(applied, key=lambda r: r["value"])
        hi = max(applied, key=lambda r: r["value"])
        ref = f"{self.ref_label} {fmt(self.ref_value)}{self.spec.get('ref_unit', ' ' + unit)}"
        if lo is hi:
            text = f"{self.ratio_text(lo['value'], self.ref_value)} ({lo['label']}; {ref})"
        else:
            text = (f"{self.ratio_text(lo['value'], self.ref_value)} ({lo['label']}) to "
                    f"{self.ratio_text(hi['value'], self.ref_value)} ({hi['label']}); {ref}")
        rest = [r for r in self.rows if not r["ref_applies"]]
        if rest:
            top = max(rest, key=lambda r: r["value"])
            text += f"; the other rows up to {fmt(top['value'])} {unit} ({top['label']})"
        return text


def times(r):
    return f"{r:,.1f}×" if r < 100 else f"{r:,.0f}×"


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f} M"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


# ---------------------------------------------------------------- plots

STORE_COLOURS = {"sqlite": "#4c72b0", "postgres": "#55a868"}
OTHER_COLOURS = ["#8172b2", "#c44e52", "#64b5cd", "#ccb974", "#937860"]
REF_COLOUR = "#dd8452"
BASELINE_COLOUR = "#a0a0a0"


def plot(plt, res, path):
    rows = res.rows
    if not rows:
        return False
    unit = res.spec.get("unit", "")
    bars = []  # (label, value, colour, hatch, note)
    if res.ref_value is not None and not res.spec.get("ours"):
        scope = f" {res.spec['ref_scope']}" if res.spec.get("ref_scope") else ""
        bars.append((f"{res.spec.get('ref', 'ceiling')}{scope}: {res.ref_label}", res.ref_value, REF_COLOUR, "//",
                     f"{fmt(res.ref_value)}{res.spec.get('ref_unit', ' ' + unit)}"))
    groups = {}
    for r in rows:
        if res.spec.get("ours"):
            colour = STORE_COLOURS["sqlite"] if r["ours"] else BASELINE_COLOUR
        else:
            key = r["label"].split(" · ")[0].lower()
            colour = STORE_COLOURS.get(key) or groups.setdefault(key, OTHER_COLOURS[len(groups) % len(OTHER_COLOURS)])
        note = ""
        if r.get("ref_applies") and not res.spec.get("ours"):
            note = res.ratio_text(r["value"], res.ref_value)
        bars.append((r["label"], r["value"], colour, "", note))
    if res.spec.get("ours"):
        best_ours = max((r["value"] for r in rows if r["ours"]), default=None)
        bars = [(l, v, c, h, (f"Crossway is {times(best_ours / v)} faster" if c == BASELINE_COLOUR and best_ours else n))
                for l, v, c, h, n in bars]

    values = [b[1] for b in bars]
    positive = [v for v in values if v > 0]
    log = bool(positive) and (res.spec.get("log") or max(positive) / min(positive) > 1000)
    fig_h = 1.2 + 0.45 * len(bars)
    fig, ax = plt.subplots(figsize=(10, fig_h), dpi=110)
    ys = list(range(len(bars)))
    ax.barh(ys, values, color=[b[2] for b in bars], hatch=None, edgecolor="white")
    for y, b in zip(ys, bars):
        if b[3]:
            ax.barh([y], [b[1]], color="none", edgecolor="white", hatch=b[3], linewidth=0)
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=9)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    else:
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if res.ref_value is not None and not res.spec.get("ours"):
        ax.axvline(res.ref_value, color=REF_COLOUR, linestyle="--", linewidth=1.2, zorder=0)
    elif res.spec.get("ours"):
        others = [r["value"] for r in rows if not r["ours"]]
        if others:
            ax.axvline(max(others), color=BASELINE_COLOUR, linestyle="--", linewidth=1.2, zorder=0)
    top = max(values)
    ax.set_xlim(min(positive) / 3 if log else 0, top * (8 if log else 1.5))
    for y, b in zip(ys, bars):
        if b[2] == REF_COLOUR:
            text = b[4]
        else:
            text = f"{fmt(b[1])} {unit}" + (f"  ({b[4]})" if b[4] else "")
        ax.text(b[1] * (1.08 if log else 1) + (0 if log else top * 0.01), y, text, va="center", fontsize=8.5,
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5), zorder=5)
    ax.set_xlabel(f"{res.value_header} (higher is better{', log scale' if log else ''})")
    title = res.spec.get("title", res.name)
    ax.set_title(f"{title} (bench/{res.name})", fontsize=11, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the report

def machine():
    cpu = "unknown"
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
        m = re.search(r"^(?:model name|Hardware|Processor|cpu model)\s*:\s*(.+)$", info, re.M)
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    except OSError:
        nproc = str(os.cpu_count())
    mem = "unknown"
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", pathlib.Path("/proc/meminfo").read_text(), re.M)
        if m:
            mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return cpu, nproc, mem, os.uname().release


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_meta(path):
    meta = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                meta[k.strip()] = v.strip()
    return meta


def slug(title):
    s = re.sub(r"[^\w\- ]", "", title.lower()).strip()
    return re.sub(r" ", "-", s)


def duration(seconds):
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        return ""
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", default=str(HERE / "report" / "raw"), help="raw tables (bench/run's output)")
    ap.add_argument("--out", default=str(HERE / "report"), help="where README.md and the PNGs go")
    ap.add_argument("--no-plots", action="store_true", help="write the Markdown only")
    args = ap.parse_args()
    raw, out = pathlib.Path(args.raw), pathlib.Path(args.out)
    if not raw.is_dir():
        log(f"{raw} is not a directory (run bench/run first)")
        return 2
    plt = None if args.no_plots else ensure_matplotlib()
    out.mkdir(parents=True, exist_ok=True)

    names = {p.stem for p in raw.iterdir() if p.suffix in (".md", ".failed")}
    names = [n for n in ORDER if n in names] + sorted(n for n in names if n not in SPECS)

    sections, summary = [], []
    metas = {}
    for name in names:
        meta = read_meta(raw / f"{name}.meta")
        metas[name] = meta
        md, failed = raw / f"{name}.md", raw / f"{name}.failed"
        png = out / f"{name}.png"
        spec = SPECS.get(name)
        title = (spec or {}).get("title", name)
        head = [f"## {title}", ""]
        where = [f"`{meta.get('command', 'bench/' + name)}`"]
        if meta.get("seconds"):
            where.append(f"ran {duration(meta['seconds'])}")
        if meta.get("date"):
            where.append(meta["date"])
        if meta.get("commit"):
            where.append(f"commit {meta['commit']}")
        head += [" · ".join(where), ""]
        if spec and spec.get("about"):
            head += [spec["about"], ""]
        anchor = f"[{title}](#{slug(title)})"
        if failed.exists() and not md.exists():
            png.unlink(missing_ok=True)
            body = failed.read_text().rstrip()
            first = body.splitlines()[0] if body else "failed"
            sections.append("\n".join(head + [f"**Failed** ({first}).", "", "```", body, "```", ""]))
            summary.append(f"| {anchor} | ✘ failed | {first} | |")
            continue
        text = md.read_text()
        res = Result(name, text, spec)
        lines = list(head)
        if res.problem:
            png.unlink(missing_ok=True)
            lines += [f"**Could not read the figures**: {res.problem}. The output as printed:", "", "```",
                      text.strip(), "```", ""]
            summary.append(f"| {anchor} | ? unreadable | {res.problem} | |")
            sections.append("\n".join(lines))
            continue
        drawn = False
        if plt is not None:
            try:
                drawn = plot(plt, res, png)
            except Exception as e:  # a plot must not cost the report
                log(f"{name}: plot failed: {e!r}")
        if not drawn:
            png.unlink(missing_ok=True)
        if drawn:
            lines += [f"![{title}]({png.name})", ""]
        lines += [f"- {h}" for h in res.headlines()]
        for label, cell in res.failed_rows:
            lines.append(f"- ✘ **{label}**: {cell}")
        for e in res.errors:
            lines.append(f"- ⚠ {e}")
        lines.append("")
        if res.caption:
            lines += [res.caption, ""]
        for t in [res.table] + res.extra_tables:
            lines += t.lines + [""]
        if res.footer:
            lines += ["  \n".join(res.footer), ""]
        sections.append("\n".join(lines))
        targets = ""
        if res.targets_met or res.targets_missed:
            targets = f"{res.targets_met}/{res.targets_met + res.targets_missed} ✔"
            if res.targets_missed:
                targets += f", {res.targets_missed} ✘"
        status = "✔" if not res.failed_rows and not res.errors else "⚠ see notes"
        summary.append(f"| {anchor} | {status} | {res.summary()} | {targets} |")

    cpu, nproc, mem, kernel = machine()
    dates = sorted(m["date"] for m in metas.values() if m.get("date"))
    commits = sorted({m["commit"] for m in metas.values() if m.get("commit")})
    modes = sorted({m["mode"] for m in metas.values() if m.get("mode")})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if dates:
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} … {dates[-1]}"
    else:
        when = f"{now} (report written; run dates unknown)"
    doc = [
        "# Crossway benchmarks",
        "",
        "Written by `bench/run` (`bench/report.py` from the raw tables in `raw/`). Every benchmark "
        "measures Crossway next to a ceiling or baseline measured in the same run on the same "
        "machine; the ratio to it is the figure to read, the absolute figures depend on the machine.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu} |",
        f"| cores (nproc) | {nproc} |",
        f"| memory | {mem} |",
        f"| kernel | {kernel} |",
        f"| date | {when} |",
        f"| commit | {', '.join(commits) if commits else git_commit()} |",
    ]
    if modes:
        doc.append(f"| mode | {', '.join(modes)}{' (bench/run --quick: short runs)' if 'quick' in modes else ''} |")
    doc += ["", "## Summary", ""]
    if summary:
        doc += ["| benchmark | | Crossway against its ceiling / baseline | targets |", "|---|---|---|---|"]
        doc += summary
    else:
        doc.append(f"No results in `{raw}`.")
    doc.append("")
    doc += sections
    (out / "README.md").write_text("\n".join(doc).rstrip() + "\n")
    log(f"wrote {out / 'README.md'} ({len(names)} benchmarks{', no plots' if plt is None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
