"""A second, independent implementation of the wmkit PRF spec in pure Python integers.

Written from the specification in wmkit/prf.py's docstring, not from its code: Philox uses the
exact 64-bit product, and nothing is vectorized. Tests compare the torch code with this.
"""

M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def anchor(t):
    return (t * 0x9E3779B9) & M32


def lefthash_u32(context, token, key):
    c = 0x811C9DC5
    for x in context:
        c = fmix32(c ^ x)
    seed = philox4x32_10((c, len(context), 0, 0), key)[0]
    return fmix32(seed ^ anchor(token))


def selfhash_u32(context, token, key):
    h = len(context)
    s = min(fmix32(philox4x32_10((x, h, 0, 1), key)[0] ^ anchor(token)) for x in context)
    return fmix32(s ^ anchor(token))


def is_green(context, token, key, gamma, seeding="lefthash"):
    f = lefthash_u32 if seeding == "lefthash" else selfhash_u32
    return f(context, token, key) < int(gamma * 2**32)
