#!/usr/bin/env bash
# Regenerates host/src/proxy/sasl/oauthbearer_kafka_verdicts.tsv: generated OAUTHBEARER
# client-first messages (gen.py) judged by Apache Kafka's own parser
# (OAuthBearerClientInitialResponse, Diff.java). The Rust test
# `oauthbearer_parser_agrees_with_apache_kafka` checks Kapsule's parser against the file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
libs=$("$here/../install-kafka.sh" | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$here/gen.py" "$here/Diff.java" .
python3 gen.py >/dev/null
javac -cp "$libs/kafka-clients-4.4.0.jar" Diff.java
java -cp "$libs/*:." Diff cases.hex > verdicts.txt 2>/dev/null
python3 - "$here/../../host/src/proxy/sasl/oauthbearer_kafka_verdicts.tsv" <<'PY'
import random, sys
random.seed(5)
cases = [l.strip() for l in open("cases.hex")]
ver = [l.rstrip("\n") for l in open("verdicts.txt")]
rows = []
for h, v in zip(cases, ver):
    if v.startswith("ACCEPT"):
        _, authz, token = v.split("\t", 2)
        rest = bytes.fromhex(h).decode().split(",", 2)[2]
        keys = [p.split("=", 1)[0] for p in rest[1:].split("\x01") if p]
        rows.append((h, "ACCEPT_REPEATED" if len(keys) != len(set(keys)) else "ACCEPT", authz, token))
    else:
        rows.append((h, "REJECT", "", ""))
acc = [r for r in rows if r[1] != "REJECT"]
rej = random.sample([r for r in rows if r[1] == "REJECT"], 360)
with open(sys.argv[1], "w") as f:
    f.write("# OAUTHBEARER client-first messages (hex) and Apache Kafka 4.4.0's verdict\n# (OAuthBearerClientInitialResponse): ACCEPT / ACCEPT_REPEATED (a key repeats; Kafka keeps the\n# last) with authzid and token, or REJECT. Regenerate with scripts/oauthbearer-kafka-verdicts/.\n")
    for r in sorted(acc + rej):
        f.write("\t".join(r) + "\n")
PY
