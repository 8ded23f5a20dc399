"""A second, independent implementation of the wmkit PRF spec (v2) in pure Python integers.

Written from the specification in wmkit/prf.py's docstring, not from its code: Philox uses the
exact 64-bit product, and nothing is vectorized. Tests compare the torch code with this. The
withdrawn spec v1 is here too (``v1_*``), for the test that shows why it was withdrawn.
"""

M32 = 0xFFFFFFFF
CTX, TOK, SEL, GV = 0x574B4358, 0x574B544B, 0x574B534C, 0x574B4756


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def state(context, key, mode, h_word=None):
    k0, k1, d0, d1 = key
    h = len(context)
    s = (d0, d1, CTX ^ mode, h if h_word is None else h_word)
    nblocks = max(1, (h + 3) // 4)
    for b in range(nblocks):
        w = [context[4 * b + i] if 4 * b + i < h else M32 - i for i in range(4)]
        s = philox4x32_10(tuple(s[i] ^ w[i] for i in range(4)), (k0 ^ b, k1))
    return s


def word(s, domain, token, key):
    out = philox4x32_10((token >> 2, s[0], s[1], s[2]), (key[0] ^ s[3], key[1] ^ domain))
    return out[token & 3]


def lefthash_u32(context, token, key):
    return word(state(list(context), key, 0), TOK, token, key)


def selfhash_u32(context, token, key):
    h = len(context)
    states = [state([x], key, 1, h) for x in context]
    sels = [word(s, SEL, token, key) for s in states]
    j = sels.index(min(sels))
    return word(states[j], TOK, token, key)


def synthid_g(context, token, key, layer):
    """SynthID's g-value (gvalues=prf) of ``token`` after ``context`` at tournament layer ``layer``."""
    return (word(state(list(context), key, 0), GV ^ (layer // 32), token, key) >> (layer % 32)) & 1


def is_green(context, token, key, gamma, seeding="lefthash"):
    f = lefthash_u32 if seeding == "lefthash" else selfhash_u32
    return f(context, token, key) < int(gamma * 2**32)


# --- spec v1 (withdrawn): one 32-bit seed per context, public per-token map ---

def fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def v1_anchor(t):
    return (t * 0x9E3779B9) & M32


def v1_seed(context, key):
    c = 0x811C9DC5
    for x in context:
        c = fmix32(c ^ x)
    return philox4x32_10((c, len(context), 0, 0), key)[0]


def v1_u32(seed, token):
    return fmix32(seed ^ v1_anchor(token))


def selfhash_anchor(context, token, key):
    """The context token whose selector word wins (its state colours ``token``)."""
    h = len(context)
    sels = [word(state([x], key, 1, h), SEL, token, key) for x in context]
    return context[sels.index(min(sels))]
