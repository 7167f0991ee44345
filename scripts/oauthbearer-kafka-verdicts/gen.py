import random
random.seed(17)
tok = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."
tok2 = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ."
headers = ["n,,", "n,a=alice,", "n,a=a=2Cb=3D,", "y,,", "n,a=,", "n,a=x=2cy,", "n,a=\x01x,", "n,", "n,a=al,ice,",
           "p=tls,,", "n,,,", "N,,", "n,a=é,", "n,a=a b,", "n,a==2C,", "n,b=alice,"]
pairs = ["auth=Bearer "+tok, "auth=bearer  "+tok, "auth=BEARER "+tok2, "auth=Basic "+tok, "auth=Bearer "+tok+"=",
         "auth=Bearer", "auth=Bearer ", "auth= Bearer "+tok, "auth=Bearer\t"+tok, "auth=Bearer "+tok+" ",
         "auth=Bearer_x "+tok, "auth=Bearer a.b.c", "k=v", "key=va=lue", "K1=v", "=v", "k=", "k=\x7f", "k=\t\r\n x",
         "logicalCluster=lkc-1", "auth", "kv", "k=v w", "Auth=Bearer "+tok, "k=\x00", "k=caf\u00e9", "k=~!",
         "auth=Bearer a+b/c~d==", "auth=Bearer a=b", "auth=Bearer ==", "auth=Bearer "+tok+"=="]
ends = ["\x01", "\x01\x01", "\x01\x01\x01", "", "\x01\x01x"]
out = set()
def add(m):
    out.add(m.encode("utf-8", "surrogatepass"))
for h in headers:
    for p in pairs[:3] + pairs[12:14]:
        add(h + "\x01" + p + "\x01\x01")
for _ in range(600):
    h = random.choice(headers) if random.random() < 0.4 else "n,,"
    n = random.choice([0, 1, 1, 2, 2, 3])
    ps = [random.choice(pairs) for _ in range(n)]
    if random.random() < 0.7 and not any(p.startswith("auth=") for p in ps):
        ps.insert(random.randrange(len(ps)+1), pairs[0])
    sep = "\x01" if random.random() < 0.9 else ""
    body = "".join(p + "\x01" for p in ps)
    if ps and random.random() < 0.1:
        body = body[:-1]
    add(h + sep + body + random.choice(ends[1:2]*6 + ends))
# byte mutations of a valid message
base = ("n,a=alice,\x01auth=Bearer "+tok+"\x01host=h\x01\x01").encode()
for _ in range(300):
    b = bytearray(base)
    for _ in range(random.choice([1, 1, 2])):
        i = random.randrange(len(b))
        b[i] = random.choice([0, 1, 0x20, 0x3d, 0x2c, 0x7f, 0x80, 0xc3, random.randrange(256)])
    out.add(bytes(b))
with open("cases.hex", "w") as f:
    for m in sorted(out):
        f.write(m.hex() + "\n")
print(len(out))
