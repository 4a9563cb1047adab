#!/usr/bin/env python3
"""Generate common/data/wordnet-synonyms.bin, the synonym table EDA augmentation reads.

Input: WordNet 3.0's plain database files (Debian package `wordnet-base`, /usr/share/wordnet):
index.{noun,verb,adj,adv}, data.{noun,verb,adj,adv} and {noun,verb,adj,adv}.exc.
Python 3 standard library only. See tools/wordnet/README.md for the exact command.

What the table answers (together with the morphy rules in common/src/augment/synonyms.rs) is
what the EDA reference code (Wei & Zou 2019) computes with NLTK:

    for syn in wordnet.synsets(word):
        for l in syn.lemmas():
            synonym = l.name().replace("_", " ").replace("-", " ").lower()
            synonym = "".join([c for c in synonym if c in ' qwertyuiopasdfghjklzxcvbnm'])

so for every (head word, part of speech) of the index files we store the set of cleaned lemma
names of all the head word's synsets in that part of speech (the head word's own cleaned form
included: the word to exclude is the query, which morphy may have changed). The exception
lists are stored as NLTK's morphy uses them: an exception key stops the suffix rules for that
part of speech, and its base forms (and the key itself) count where they are in that index.

Binary layout (all integers little-endian u32 unless noted):

    header  : magic b"WNSYN30\\0", version u32, head_count u32, section_count u32,
              then section_count x (byte offset u32, byte length u32), in this order:
    pool    : strings, each a u8 length then its bytes; a string's id is the byte offset of
              its length byte. Strings are laid out in sorted (byte) order, so sorting ids
              sorts the strings.
    entries : E x u32 string ids of the look-up keys (index head words and exception keys),
              sorted, for binary search.
    masks   : E x u8; bit p (0..4: noun, verb, adj, adv) = the key is in index.<p>;
              bit 4+p = the key is in <p>.exc.
    first   : (E+1) x u32; entry e's synonym lists are slots first[e].., one for each bit set
              in masks[e] & 0xF, in part-of-speech order.
    slots   : (S+1) x u32 offsets into `lists`; slot s is lists[slots[s]..slots[s+1]].
    lists   : string ids of cleaned synonyms, ascending within a slot.
    exc_key : X x u32, entry * 4 + pos for every exception key, ascending.
    exc_off : (X+1) x u32 offsets into exc_forms.
    exc_forms: entry indices of the exception's forms (the key first if indexed, then the base
              forms) that are in that part of speech's index.
"""

import argparse
import os
import re
import struct
import sys

MAGIC = b"WNSYN30\0"
VERSION = 1
POS = ["noun", "verb", "adj", "adv"]  # bit order and NLTK's POS_LIST order (n, v, a, r)
KEEP = set(" qwertyuiopasdfghjklzxcvbnm")
# NLTK strips an adjective's syntactic marker, e.g. "galore(ip)" -> "galore".
MARKER = re.compile(r"(.*?)(\([^()]*\))?$")


def clean(name):
    """EDA's cleaning of a lemma name."""
    name = name.replace("_", " ").replace("-", " ").lower()
    return "".join(c for c in name if c in KEEP)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            # The licence header lines start with two spaces; data lines never do.
            if not line.startswith(" "):
                yield line


def read_synsets(wn, pos):
    """offset -> set of cleaned lemma names, for data.<pos>."""
    synsets = {}
    for line in read_lines(os.path.join(wn, "data." + pos)):
        fields = line.split()
        offset = int(fields[0])
        w_cnt = int(fields[3], 16)
        names = (MARKER.match(fields[4 + 2 * i]).group(1) for i in range(w_cnt))
        synsets[offset] = {c for c in map(clean, names) if c}
    return synsets


def read_index(wn, pos):
    """head word -> synset offsets, for index.<pos> (parsed as NLTK does)."""
    index = {}
    for line in read_lines(os.path.join(wn, "index." + pos)):
        fields = line.split()
        lemma, n_synsets, n_pointers = fields[0], int(fields[2]), int(fields[3])
        start = 4 + n_pointers + 2  # skip pointer symbols, sense_cnt, tagsense_cnt
        index[lemma] = [int(x) for x in fields[start : start + n_synsets]]
    return index


def read_exceptions(wn, pos):
    """inflected form -> base forms, for <pos>.exc (NLTK keeps the last line of a key)."""
    exc = {}
    for line in read_lines(os.path.join(wn, pos + ".exc")):
        terms = line.split()
        if terms:
            exc[terms[0]] = terms[1:]
    return exc


def build(wn):
    lists = []  # per pos: head -> sorted cleaned synonyms
    excs = []  # per pos: key -> forms in that index, NLTK's filter_forms([key] + bases)
    for pos in POS:
        synsets = read_synsets(wn, pos)
        index = read_index(wn, pos)
        lists.append({h: sorted(set().union(*(synsets[o] for o in offs))) for h, offs in index.items()})
        exc = {}
        for key, bases in read_exceptions(wn, pos).items():
            forms = []
            for form in [key] + bases:
                if form in index and form not in forms:
                    forms.append(form)
            exc[key] = forms
        excs.append(exc)

    keys = set().union(*lists, *excs)
    strings = keys | {s for per_pos in lists for syns in per_pos.values() for s in syns}
    strings = sorted(strings, key=lambda s: s.encode())

    pool = bytearray()
    sid = {}
    for s in strings:
        b = s.encode()
        if len(b) > 255:
            sys.exit("string too long for a u8 length: %r" % s)
        sid[s] = len(pool)
        pool.append(len(b))
        pool += b

    entries = sorted(keys, key=lambda s: s.encode())
    eid = {k: i for i, k in enumerate(entries)}
    masks, first, slots, flat = bytearray(), [], [0], []
    exc_key, exc_off, exc_forms = [], [0], []
    for e, k in enumerate(entries):
        mask = 0
        first.append(len(slots) - 1)
        for p in range(4):
            if k in lists[p]:
                mask |= 1 << p
                flat.extend(sid[s] for s in lists[p][k])
                slots.append(len(flat))
            if k in excs[p]:
                mask |= 1 << (4 + p)
                exc_key.append(e * 4 + p)
                exc_forms.extend(eid[f] for f in excs[p][k])
                exc_off.append(len(exc_forms))
        masks.append(mask)
    first.append(len(slots) - 1)

    head_count = sum(1 for k in entries if any(k in lists[p] for p in range(4)))
    u32 = lambda xs: struct.pack("<%dI" % len(xs), *xs)  # noqa: E731
    sections = [bytes(pool), u32([sid[k] for k in entries]), bytes(masks), u32(first),
                u32(slots), u32(flat), u32(exc_key), u32(exc_off), u32(exc_forms)]

    header_len = len(MAGIC) + 12 + 8 * len(sections)
    header = bytearray(MAGIC + struct.pack("<III", VERSION, head_count, len(sections)))
    body = bytearray()
    for sec in sections:
        header += struct.pack("<II", header_len + len(body), len(sec))
        body += sec
    stats = dict(strings=len(strings), entries=len(entries), heads=head_count,
                 slots=len(slots) - 1, list_ids=len(flat), exceptions=len(exc_key))
    return bytes(header + body), stats


def licence_text(wn):
    """The Princeton licence, verbatim from the numbered header of index.noun."""
    out = []
    with open(os.path.join(wn, "index.noun"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            # "  5 text  " -> "text": drop the line number and the trailing padding.
            out.append(line.split(" ", 3)[3].rstrip())
    return "\n".join(out).strip("\n") + "\n"


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet 3.0 dict directory")
    ap.add_argument("--out", default=os.path.join(root, "common", "data", "wordnet-synonyms.bin"))
    ap.add_argument("--licence-out", default=os.path.join(root, "common", "data", "WORDNET-LICENSE"))
    args = ap.parse_args()

    table, stats = build(args.wordnet)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(table)
    with open(args.licence_out, "w", encoding="utf-8") as f:
        f.write(licence_text(args.wordnet))
    print("%s: %d bytes, %s" % (args.out, len(table), stats))


if __name__ == "__main__":
    main()
