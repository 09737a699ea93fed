"""Benchmark the domain index against two pure-Python designs: compile time, lookup latency, memory, sharing.

    .venv/bin/python tests/perf/bench_domains.py [--entries 1000000] [--queries 200000] [--seed 1]
    .venv/bin/python tests/perf/bench_domains.py --reload [--entries 1000000] [--rounds 5]

Variants, each measured in fresh subprocesses so their memory and caches do not mix:
  a  dict-of-labels trie         nested {label: node} dicts, walked from the TLD down
  b  flat suffix dict            {name: masks}, probed once per suffix of the query name
  c  resolver.filtering.domains the compiled image, memory-mapped read-only (what schooldns uses)

For a and b a "compile" child builds the structure from an entry list and pickles it; a "serve"
child (a worker) unpickles it, the cheapest way for a worker to get a Python-object index. For c the
compile child runs build_index + write_index and the serve child runs DomainIndex.load. Each serve
child reads VmRSS / RssAnon / RssFile from /proc/self/status before and after, then times lookups of
a fixed query mix. Finally two processes map the same index file and /proc/<pid>/smaps shows whether
the second one pays for it privately. Results are printed; nothing is asserted about speed.

--reload times, in this process, what a reload does with the generated list written as one
domains-format file: parse it (listformats.parse_domains_text), build the image
(domains.build_index_runs) and check it as a load does (DomainIndex.from_bytes), `--rounds` times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from resolver.filtering import domains, listformats

Entry = tuple[str, int, str, str]

VARIANTS = {
    "trie": "a dict-of-labels trie",
    "flat": "b flat suffix dict",
    "mmap": "c mmap hash table (domains)",
}
QUERY_CLASSES = ("listed", "via-parent", "unlisted", "deep")

# ---------------------------------------------------------------------------------------------
# Deterministic synthetic data
# ---------------------------------------------------------------------------------------------

# fmt: off
SYLLABLES = [
    "an", "bao", "bet", "bong", "cau", "chat", "cho", "club", "da", "dep", "dien", "game", "hay", "hot", "kenh",
    "khach", "lo", "ma", "mau", "moi", "nha", "phim", "sex", "shop", "so", "tai", "tin", "top", "tv", "video",
    "viet", "vip", "web", "xem", "xo", "yeu", "zing", "net", "play", "casino", "live", "news", "mobi", "app",
    "cloud", "cdn", "ad", "track", "click", "stat", "media", "pro", "one", "24h", "365", "88", "99", "sao",
    "sky", "star", "hoc", "dam", "luat",
]
# fmt: on
TLDS = (  # (tld, weight)
    ("com", 40),
    ("net", 8),
    ("org", 5),
    ("vn", 10),
    ("com.vn", 10),
    ("net.vn", 3),
    ("edu.vn", 2),
    ("info", 4),
    ("xyz", 4),
    ("io", 3),
    ("top", 4),
    ("club", 2),
    ("online", 3),
    ("site", 2),
)
SUBDOMAINS = ("www", "m", "cdn", "api", "img", "static", "login", "app")
CATEGORY_WEIGHTS = [30, 20, 12, 10, 8, 6, 5, 4, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


class NameMaker:
    """Seeded generator of plausible 2-4 label domain names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.tlds = [tld for tld, _ in TLDS]
        self.tld_weights = [weight for _, weight in TLDS]

    def label(self) -> str:
        rng = self.rng
        parts = rng.choices(SYLLABLES, k=rng.randint(1, 3))
        label = ("-" if rng.random() < 0.1 else "").join(parts)
        if rng.random() < 0.3:
            label += str(rng.randint(0, 999))
        return label

    def name(self) -> str:
        rng = self.rng
        tld = rng.choices(self.tlds, self.tld_weights)[0]
        name = f"{self.label()}.{tld}"
        if rng.random() < 0.35 and name.count(".") < 3:
            prefix = rng.choice(SUBDOMAINS) if rng.random() < 0.5 else self.label()
            name = f"{prefix}.{name}"
        return name


def make_entries(count: int, seed: int) -> list[Entry]:
    """`count` entries over ~96% distinct names; some names carry two categories, ~2% are allows."""
    rng = random.Random(seed)
    maker = NameMaker(rng)
    categories = list(range(len(CATEGORY_WEIGHTS)))
    seen: set[str] = set()
    subtree_names: list[str] = []
    entries: list[Entry] = []
    while len(entries) < count:
        roll = rng.random()
        if roll < 0.02 and subtree_names:  # adblock-style @@ exception below a listed site
            parent = rng.choice(subtree_names)
            bit = rng.choices(categories, CATEGORY_WEIGHTS)[0]
            match = "subtree" if rng.random() < 0.7 else "exact"
            entries.append((f"{rng.choice(SUBDOMAINS)}.{parent}", bit, match, "allow"))
            continue
        if roll < 0.04 and entries:  # same name listed in a second category
            name = entries[-1][0]
        else:
            name = maker.name()
            if name in seen:
                continue
            seen.add(name)
        match = "subtree" if rng.random() < 0.85 else "exact"
        if match == "subtree":
            subtree_names.append(name)
        entries.append((name, rng.choices(categories, CATEGORY_WEIGHTS)[0], match, "block"))
    return entries


def make_queries(entries: list[Entry], count: int, seed: int) -> list[tuple[str, str]]:
    """(query class, name) pairs: listed names, names under subtree entries, unlisted and deep names."""
    rng = random.Random(seed + 1)
    maker = NameMaker(rng)
    listed = [name for name, _, _, _ in entries]
    subtree = [name for name, _, match, _ in entries if match == "subtree"]
    queries = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.30:
            queries.append(("listed", rng.choice(listed)))
        elif roll < 0.55:
            queries.append(("via-parent", f"{rng.choice(SUBDOMAINS)}.{rng.choice(subtree)}"))
        elif roll < 0.85:
            queries.append(("unlisted", maker.name()))
        else:
            base = rng.choice(listed) if rng.random() < 0.5 else maker.name()
            prefix = ".".join(maker.label() for _ in range(rng.randint(2, 4)))
            queries.append(("deep", f"{prefix}.{base}"))
    return queries


def write_lines(path: Path, rows: Iterable[Iterable[object]]) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.writelines("\t".join(map(str, row)) + "\n" for row in rows)


def read_entries(path: Path) -> Iterator[Entry]:
    with open(path, encoding="ascii") as file:
        for line in file:
            name, bit, match, kind = line.rstrip("\n").split("\t")
            yield name, int(bit), match, kind


# ---------------------------------------------------------------------------------------------
# Variants a and b: the pure-Python designs the compiled index is compared against
# ---------------------------------------------------------------------------------------------

_COLUMN = {("block", "exact"): 0, ("block", "subtree"): 1, ("allow", "exact"): 2, ("allow", "subtree"): 3}


def merge_entries(entries: Iterable[Entry]) -> dict[str, tuple[int, int, int, int]]:
    """name -> (own block, own allow, parent block, parent allow), equal tuples shared."""
    quads: dict[str, list[int]] = {}
    for name, bit, match, kind in entries:
        quads.setdefault(name, [0, 0, 0, 0])[_COLUMN[kind, match]] |= 1 << bit
    interned: dict[tuple[int, int, int, int], tuple[int, int, int, int]] = {}
    merged = {}
    for name, (block_exact, block_subtree, allow_exact, allow_subtree) in quads.items():
        masks = (block_exact | block_subtree, allow_exact | allow_subtree, block_subtree, allow_subtree)
        merged[name] = interned.setdefault(masks, masks)
    return merged


class FlatSuffixDict:
    """Variant b: {name: masks}; a lookup probes the name and each parent suffix."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.masks_by_name = merge_entries(entries)

    def lookup(self, name: str) -> int:
        masks_by_name = self.masks_by_name
        block = allow = 0
        masks = masks_by_name.get(name)
        if masks is not None:
            block, allow = masks[0], masks[1]
        start = name.find(".") + 1
        while start:
            masks = masks_by_name.get(name[start:])
            if masks is not None:
                block |= masks[2]
                allow |= masks[3]
            start = name.find(".", start) + 1
        return block & ~allow


class LabelTrie:
    """Variant a: nested dicts keyed by label from the TLD down; a node's masks sit under key None."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.root: dict = {}
        for name, masks in merge_entries(entries).items():
            node = self.root
            for label in reversed(name.split(".")):
                node = node.setdefault(sys.intern(label), {})
            node[None] = masks

    def lookup(self, name: str) -> int:
        labels = name.split(".")
        node = self.root
        block = allow = 0
        for depth in range(len(labels) - 1, -1, -1):
            node = node.get(labels[depth])
            if node is None:
                break
            masks = node.get(None)
            if masks is not None:
                if depth:
                    block |= masks[2]
                    allow |= masks[3]
                else:
                    block |= masks[0]
                    allow |= masks[1]
        return block & ~allow


PYTHON_VARIANTS = {"trie": LabelTrie, "flat": FlatSuffixDict}

# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


def proc_status_kb() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process, in kB."""
    fields = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    return fields


def mapping_smaps_kb(path: Path) -> dict[str, int]:
    """Rss / Pss / Shared_* / Private_* of this process's mappings of `path`, in kB."""
    totals: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as file:
        for line in file:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping header line
                inside = line.rstrip("\n").endswith(str(path))
            elif inside and first.endswith(":") and line.rstrip().endswith("kB"):
                key = first[:-1]
                if key in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty"):
                    totals[key] = totals.get(key, 0) + int(line.split()[1])
    return totals


def rollup_smaps_kb() -> dict[str, int]:
    """Whole-process Rss / Pss / Shared_* / Private_* from /proc/self/smaps_rollup, in kB."""
    totals = {}
    with open("/proc/self/smaps_rollup") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty"):
                totals[key] = int(value.split()[0])
    return totals


def time_lookups(lookup: Callable[[str], int], queries: list[tuple[str, str]]) -> dict[str, object]:
    """Per-call latency (timer overhead subtracted) by query class, batch mean, and a result digest."""
    names = [name for _, name in queries]
    for name in names:  # warm-up pass: first-touch page faults and cold caches are not lookups
        lookup(name)

    def noop(name: str) -> int:
        return 0

    clock = time.perf_counter_ns
    samples_by_callee: dict[str, list[int]] = {}
    for label, callee in (("noop", noop), ("lookup", lookup)):
        samples = []
        for name in names:
            started = clock()
            callee(name)
            samples.append(clock() - started)
        samples_by_callee[label] = samples
    overhead_ns = statistics.median(samples_by_callee["noop"])
    latencies_ns = [max(0.0, sample - overhead_ns) for sample in samples_by_callee["lookup"]]

    started = clock()
    results = [lookup(name) for name in names]
    batch_mean_ns = (clock() - started) / len(names)

    by_class = {
        cls: [ns for (qcls, _), ns in zip(queries, latencies_ns, strict=True) if qcls == cls] for cls in QUERY_CLASSES
    }
    return {
        "median_ns": statistics.median(latencies_ns),
        "p99_ns": quantile(latencies_ns, 0.99),
        "batch_mean_ns": batch_mean_ns,
        "class_median_ns": {cls: statistics.median(ns) if ns else 0.0 for cls, ns in by_class.items()},
        "digest": hashlib.sha256(json.dumps(results).encode()).hexdigest()[:16],
        "blocked_fraction": sum(1 for result in results if result) / len(results),
    }


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def child_compile(variant: str, workdir: Path) -> dict[str, object]:
    entries = list(read_entries(workdir / "entries.tsv"))
    if variant == "mmap":
        started = time.perf_counter()
        image = domains.build_index(entries)
        compile_seconds = time.perf_counter() - started
        domains.write_index(workdir / "index.bin", image)
        return {"compile_seconds": compile_seconds, "image_bytes": len(image)}
    started = time.perf_counter()
    structure = PYTHON_VARIANTS[variant](entries)
    compile_seconds = time.perf_counter() - started
    with open(workdir / f"{variant}.pickle", "wb") as file:
        pickle.dump(structure, file, protocol=pickle.HIGHEST_PROTOCOL)
    return {"compile_seconds": compile_seconds}


def child_serve(variant: str, workdir: Path) -> dict[str, object]:
    queries = [tuple(line.split("\t")) for line in (workdir / "queries.tsv").read_text(encoding="ascii").splitlines()]
    before = proc_status_kb()
    started = time.perf_counter()
    if variant == "mmap":
        # load() checksums the whole image through the mapping, so every page is now resident.
        index = domains.DomainIndex.load(workdir / "index.bin")
    else:
        with open(workdir / f"{variant}.pickle", "rb") as file:
            index = pickle.load(file)
    load_seconds = time.perf_counter() - started
    after = proc_status_kb()
    result = time_lookups(index.lookup, queries)
    result.update(
        load_seconds=load_seconds,
        rss_added_kb=after["VmRSS"] - before["VmRSS"],
        anon_added_kb=after["RssAnon"] - before["RssAnon"],
        file_added_kb=after["RssFile"] - before["RssFile"],
    )
    return result


def child_share(workdir: Path, hold: bool) -> dict[str, object]:
    """Map the index; report how much of the mapping this process holds privately vs shared."""
    index_path = workdir / "index.bin"
    before = proc_status_kb()
    index = domains.DomainIndex.load(index_path)
    after = proc_status_kb()
    if hold:  # the first worker: tell the parent it has mapped the index, then wait to be released
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.read()
    index.lookup("www.example.com")
    return {
        "anon_added_kb": after["RssAnon"] - before["RssAnon"],
        "mapping": mapping_smaps_kb(index_path),
        "rollup": rollup_smaps_kb(),
    }


def time_reload(entries: list[Entry], rounds: int) -> None:
    """Seconds of each stage of a reload of `entries`' block names as one domains file, in process."""
    text = "".join(f"{name}\n" for name, _, _, kind in entries if kind == "block")
    print(f"reload of {text.count(chr(10)):,} domains lines in process (seconds): parse, build, check, total")
    for _ in range(rounds):
        started = time.perf_counter()
        runs = listformats.parse_domains_text(text)
        parsed = time.perf_counter()
        image = domains.build_index_runs([(0, match, kind, names) for (match, kind), names in runs.items()])
        built = time.perf_counter()
        domains.DomainIndex.from_bytes(image)
        checked = time.perf_counter()
        print(
            f"{parsed - started:6.3f} {built - parsed:6.3f} {checked - built:6.3f} {checked - started:6.3f}", flush=True
        )


def run_child(args: argparse.Namespace, role: str, variant: str = "") -> dict[str, object]:
    command = [sys.executable, __file__, "--child", role, "--workdir", str(args.workdir), "--variant", variant]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode:
        sys.exit(f"child {role} {variant} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.splitlines()[-1])


def measure_sharing(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    """Start a worker that maps the index and waits; then a second one; return both reports."""
    command = [sys.executable, __file__, "--child", "share-hold", "--workdir", str(args.workdir)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as first:
        assert first.stdout is not None and first.stdin is not None
        ready = first.stdout.readline()
        if not ready:
            sys.exit("share-hold child exited before mapping the index")
        second = run_child(args, "share")
        first_report, _ = first.communicate("")
    if first.returncode:
        sys.exit("share-hold child failed")
    return json.loads(first_report.splitlines()[-1]), second


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def us(ns: float) -> str:
    return f"{ns / 1000:.2f}"


def print_report(args, entries, compiled, served, sharing) -> None:
    distinct = len({name for name, _, _, _ in entries})
    print(
        f"\nDomain index benchmark: {len(entries):,} entries ({distinct:,} distinct names), "
        f"{args.queries:,} queries, seed {args.seed}"
    )
    print(
        f"Python {platform.python_version()} on {platform.machine()} {platform.system()}, image "
        f"{compiled['mmap']['image_bytes'] / 2**20:.1f} MiB\n"
    )
    header = (
        f"{'variant':30} {'compile s':>9} {'load s':>7} {'median us':>9} {'p99 us':>7} {'mean us':>8}"
        f" {'RSS+ MB':>8} {'anon+ MB':>8} {'file+ MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for variant, title in VARIANTS.items():
        c, s = compiled[variant], served[variant]
        print(
            f"{title:30} {c['compile_seconds']:9.2f} {s['load_seconds']:7.2f} {us(s['median_ns']):>9}"
            f" {us(s['p99_ns']):>7} {us(s['batch_mean_ns']):>8} {mb(s['rss_added_kb']):>8}"
            f" {mb(s['anon_added_kb']):>8} {mb(s['file_added_kb']):>8}"
        )
    print("\nmedian us by query class     " + " ".join(f"{cls:>10}" for cls in QUERY_CLASSES))
    for variant, title in VARIANTS.items():
        medians = served[variant]["class_median_ns"]
        print(f"{title:28} " + " ".join(f"{us(medians[cls]):>10}" for cls in QUERY_CLASSES))

    print("\nTwo worker processes mapping the same index file (kB, from /proc/<pid>/smaps):")
    keys = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty")
    print(f"{'process':28} {'anon+':>8} " + " ".join(f"{key:>13}" for key in keys))
    for title, report in (("first worker (index mapping)", sharing[0]), ("second worker (index mapping)", sharing[1])):
        print(
            f"{title:28} {report['anon_added_kb']:8} " + " ".join(f"{report['mapping'].get(key, 0):13}" for key in keys)
        )
    rollup = sharing[1]["rollup"]
    print(f"{'second worker (whole process)':28} {'':8} " + " ".join(f"{rollup.get(key, 0):13}" for key in keys))
    private_kb = sum(sharing[1]["mapping"].get(key, 0) for key in ("Private_Clean", "Private_Dirty"))
    print(
        f"\nsecond worker: index pages resident {sharing[1]['mapping'].get('Rss', 0)} kB, "
        f"held privately {private_kb} kB, heap growth on load {sharing[1]['anon_added_kb']} kB"
    )

    digests = {served[variant]["digest"] for variant in VARIANTS}
    verdict = "all variants agree" if len(digests) == 1 else "VARIANTS DISAGREE"
    print(f"lookup results: {verdict} ({served['mmap']['blocked_fraction']:.1%} of queries blocked)")
    if len(digests) != 1:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="list entries to index (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=200_000, help="lookups to time per variant")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reload", action="store_true", help="only time a reload's stages in this process")
    parser.add_argument("--rounds", type=int, default=5, help="reloads to time with --reload")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        roles = {
            "compile": lambda: child_compile(args.variant, args.workdir),
            "serve": lambda: child_serve(args.variant, args.workdir),
            "share-hold": lambda: child_share(args.workdir, hold=True),
            "share": lambda: child_share(args.workdir, hold=False),
        }
        print(json.dumps(roles[args.child]()))
        return

    if args.reload:
        time_reload(make_entries(args.entries, args.seed), args.rounds)
        return

    with tempfile.TemporaryDirectory(prefix="bench-domains-") as workdir:
        args.workdir = Path(workdir)
        entries = make_entries(args.entries, args.seed)
        write_lines(args.workdir / "entries.tsv", entries)
        write_lines(args.workdir / "queries.tsv", make_queries(entries, args.queries, args.seed))
        compiled = {variant: run_child(args, "compile", variant) for variant in VARIANTS}
        served = {variant: run_child(args, "serve", variant) for variant in VARIANTS}
        sharing = measure_sharing(args)
        print_report(args, entries, compiled, served, sharing)


if __name__ == "__main__":
    main()
