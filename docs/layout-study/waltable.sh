#!/usr/bin/env bash
# Usage: waltable.sh N FILE...: pg_waldump --stats=record output as bytes per delivery
# (record + full-page images) by record type, N deliveries; types under 5 B/delivery grouped.
n=$1; shift
awk -v n="$n" '
  /^[A-Za-z0-9]+\/[A-Z0-9_+]+ / { t=$1; cnt=$2; rec=$5; fpi=$8;
      c[t]+=cnt; r[t]+=rec; f[t]+=fpi; tot+=rec+fpi }
  END { for (t in c) { b=(r[t]+f[t])/n; if (b >= 5) printf "%-22s %6.2f %8.1f %8.1f\n", t, c[t]/n, b, f[t]/n; else other+=b }
        printf "%-22s %6s %8.1f\n", "(other)", "", other; printf "%-22s %6s %8.1f\n", "TOTAL", "", tot/n }' "$@" | sort -k3 -n -r
