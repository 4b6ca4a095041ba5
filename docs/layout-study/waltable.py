#!/usr/bin/env python3
"""Markdown table of WAL bytes per delivery by record type (record + full-page images),
from pg_waldump --stats=record outputs: waltable.py N label=file [label=file ...]"""
import re, sys
n = float(sys.argv[1])
cols, data, fpi = [], {}, {}
for arg in sys.argv[2:]:
    label, path = arg.split('=', 1)
    cols.append(label)
    for line in open(path):
        m = re.match(r'^(\S+/\S+)\s+(\d+)\s+\(.*?\)\s+(\d+)\s+\(.*?\)\s+(\d+)\s+\(.*?\)\s+(\d+)', line)
        if m:
            t = m.group(1)
            data.setdefault(t, {})[label] = int(m.group(5)) / n
            fpi[label] = fpi.get(label, 0) + int(m.group(4)) / n
rows = sorted(data, key=lambda t: -max(data[t].values()))
print('| record type | ' + ' | '.join(cols) + ' |')
print('|---|' + '---:|' * len(cols))
other = {c: 0.0 for c in cols}
for t in rows:
    if max(data[t].values()) < 8:
        for c in cols: other[c] += data[t].get(c, 0)
        continue
    print(f'| {t} | ' + ' | '.join(f'{data[t].get(c, 0):,.0f}' for c in cols) + ' |')
print('| (other types) | ' + ' | '.join(f'{other[c]:,.0f}' for c in cols) + ' |')
print('| **total** | ' + ' | '.join(f'**{sum(d.get(c, 0) for d in data.values()):,.0f}**' for c in cols) + ' |')
print('| of which full-page images | ' + ' | '.join(f'{fpi.get(c, 0):,.0f}' for c in cols) + ' |')
