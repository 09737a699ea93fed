"""RPZ export: the records of a zone that decides every name as the compiled index does, streamed from the list files.

A zone is the categories of a mask (one category, or the province's mandatory ones). Its records
come from the names of those categories' list files, read again line by line: the index holds
no names, and a million names must not become a million objects at once. The index says what
each name decides (`DomainIndex.layers`), and a bitmap of its slots tells names already written.

The records are chosen so that the zone decides the same under the RPZ rule (an exact trigger
wins, else the longest `*.` trigger above the name: BIND, PowerDNS Recursor) and under
unbound's, which looks for a wildcard only at the closest name the zone holds above the query:

- `d CNAME .` (or `rpz-passthru.`) when the decision for d differs from what its parent passes
  down; `*.d` likewise for the names under d. A name whose records would repeat what is above
  it gets none: nothing in a block list of subtrees lies under another blocked subtree.
- An exception (a pass-through record) inside a blocked `*.b` makes the names between b and it
  names of the zone, where unbound stops looking: each of them, and the exception itself, gets a
  `*.` record of its own that carries the block down.

Allow entries therefore appear only where they lift a block of the zone's categories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from resolver.errors import ResolverError
from resolver.filtering import domains, listformats, lists

_Layers = Callable[[str], tuple[int, int, int, int]]  # DomainIndex.layers

# (owner relative to the zone, "ads.example" or "*.ads.example"; True: `CNAME .`, False: `CNAME rpz-passthru.`)
Record = tuple[str, bool]


class StaleLists(ResolverError):
    """A name in a list file that the installed index does not hold: the files changed after it was compiled."""


def zone_records(index: domains.DomainIndex, sources: Iterable[lists.Source], mask: int) -> Iterator[Record]:
    """Every record of the zone of the categories in `mask`, from `sources` (their block and allow files).

    Raises StaleLists at the first listed name the index does not know. Memory: a bit per index
    slot, and the few names between exceptions and the blocks around them.
    """
    layers = index.layers
    seen = bytearray(index.slot_count // 8 + 1)
    carried: set[str] = set()  # names whose `*.` record carries a block down to an exception under them
    for source in sources:
        with open(source.path, encoding="utf-8", errors="replace") as lines:
            for name, _, _ in listformats.parse_list(source.format, lines, listformats.Tally(), source.match):
                slot, here_mask, below_mask, above_mask = layers(name)
                if slot < 0:
                    raise StaleLists(f"{source.file}: '{name}' is not in the compiled lists; they changed since")
                if seen[slot >> 3] & 1 << (slot & 7):
                    continue
                seen[slot >> 3] |= 1 << (slot & 7)
                here, below, above = bool(here_mask & mask), bool(below_mask & mask), bool(above_mask & mask)
                if here != above:
                    yield name, here
                if below != above:
                    yield f"*.{name}", below
                if above and (here != above or below != above):
                    yield from _carry_block(layers, mask, name, below, carried)


def _carry_block(layers: _Layers, mask: int, name: str, below: bool, carried: set[str]) -> Iterator[Record]:
    """`*.` records from an exception up to the blocked name above it, for names that do not have one yet."""
    above = True
    while above and name not in carried:
        carried.add(name)
        if below:  # as blocked as above it: no record of its own yet
            yield f"*.{name}", True
        name = name.partition(".")[2]
        if not name:
            return
        _, _, below_mask, above_mask = layers(name)
        below, above = bool(below_mask & mask), bool(above_mask & mask)
