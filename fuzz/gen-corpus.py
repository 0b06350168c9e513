#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/{header,bitmap,open}/ (seed-*).

Run from anywhere: python3 fuzz/gen-corpus.py.  Inputs found by fuzzing
(crash-*, and minimized cov-*) are kept in the same folders and are not
touched.  The byte layouts are those the harnesses read (see the comment at
the top of each fuzz-*.c).
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, '..', 'tests', 'data', 'vectors')
MAGIC = 0x4144445F434F57FF


def header(backing=b'', image=b'disk.raw', size=20480, version=1, magic=MAGIC,
           backing_field=None, image_field=None):
    h = struct.pack('>QI', magic, version)
    h += backing_field if backing_field is not None else backing.ljust(1024, b'\0')
    h += image_field if image_field is not None else image.ljust(1024, b'\0')
    h += struct.pack('>Q', size)
    assert len(h) == 2068
    return h


def write(kind, name, data):
    d = os.path.join(HERE, 'corpus', kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'seed-' + name), 'wb') as f:
        f.write(data)


def gen_header():
    for v in ('v1/disk.add-cow', 'v2/odd.add-cow', 'v3/c1.add-cow', 'v3/c2.add-cow'):
        with open(os.path.join(VECTORS, v), 'rb') as f:
            write('header', 'vector-' + v.replace('/', '-'), f.read())
    write('header', 'valid-nobacking', header())
    write('header', 'valid-backing', header(b'base.raw'))
    write('header', 'long-paths', header(b'b' * 1023, b'i' * 1023))
    write('header', 'backing-no-nul', header(backing_field=b'x' * 1024))
    write('header', 'image-no-nul', header(image_field=b'y' * 1024))
    write('header', 'image-empty', header(image=b''))
    write('header', 'garbage-after-nul',
          header(backing_field=b'base.raw\0' + b'\xee' * 1015,
                 image_field=b'disk.raw\0' + b'\x11' * 1015))
    for ver in (0, 2, 0xFFFFFFFF):
        write('header', 'version-%x' % ver, header(version=ver))
    write('header', 'bad-magic', header(magic=MAGIC ^ 1))
    for n in (0, 11, 12, 2067):
        write('header', 'short-%d' % n, header()[:n])
    for name, size in (('max', 2**63 - 512), ('max-plus-511', 2**63 - 1),
                       ('2p63', 2**63), ('2p64-1', 2**64 - 1), ('odd', 5420), ('zero', 0)):
        write('header', 'size-' + name, header(size=size))
    write('header', 'with-bitmap', header(size=4096) + b'\x81')


# ---- bitmap: sel u8, nbits u32, then ops --------------------------------------

def bm_pos(sel, v):
    return struct.pack('<BI', sel, v)


def gen_bitmap():
    CB = 65536 * 8
    # small, known: set / clear / finds / store
    ops = b''
    ops += bytes([0]) + bm_pos(0, 10) + bm_pos(0, 200)          # set [10, 200)
    ops += bytes([1]) + bm_pos(0, 60) + bm_pos(0, 70)           # clear [60, 70)
    ops += bytes([2]) + bm_pos(0, 0) + bm_pos(2, 0)             # find set
    ops += bytes([3]) + bm_pos(0, 10) + bm_pos(2, 0)            # find clear
    ops += bytes([4]) + bm_pos(0, 10) + bm_pos(0, 60)           # all_set
    ops += bytes([5]) + bm_pos(0, 0) + bm_pos(2, 0)             # count
    ops += bytes([6]) + bm_pos(0, 64) + bm_pos(0, 128)          # uniform
    ops += bytes([10]) + bm_pos(0, 0) + struct.pack('<H', 40)   # store
    ops += bytes([16]) + struct.pack('<H', 3)                    # dirty walk
    write('bitmap', 'small-known', struct.pack('<BI', 0, 1000) + ops)
    # several chunks, unknown, install / zero / resize across boundaries
    ops = b''
    ops += bytes([11, 0, 1])                                     # install chunk 0 all set
    ops += bytes([12, 1])                                        # chunk 1 zero
    ops += bytes([11, 2, 3 | (3 << 3)]) + struct.pack('<IB', 77, 0x0f) * 3
    ops += bytes([13]) + bm_pos(0, 0) + bm_pos(2, 0)             # first_unknown
    ops += bytes([1]) + bm_pos(1 | (1 << 2), 0xF0) + bm_pos(1 | (1 << 2), 0x10)
    ops += bytes([0]) + bm_pos(1 | (2 << 2), 0x80) + bm_pos(1 | (2 << 2), 0x7f)
    ops += bytes([8, 2 | (1 << 2)]) + struct.pack('<I', 5)       # resize near 1 chunk
    ops += bytes([8, 0]) + struct.pack('<I', 299)
    ops += bytes([16]) + struct.pack('<H', 1)
    ops += bytes([14]) + struct.pack('<HH', 0, 500)
    ops += bytes([16]) + struct.pack('<H', 7)
    ops += bytes([15]) + struct.pack('<HH', 3, 20)
    write('bitmap', 'chunks-unknown', struct.pack('<BI', 2 | (1 << 3) | 0x80, 1000) + ops)
    # around one chunk, known, loads and stores across the boundary
    ops = b''
    ops += bytes([9 | 0x80]) + bm_pos(1 | (1 << 2), 0xC0) + struct.pack('<H', 3000) + bytes([1])
    ops += bytes([10 | 0x80]) + bm_pos(1 | (1 << 2), 0xC0) + struct.pack('<H', 4000)
    ops += bytes([9]) + bm_pos(2, 5) + struct.pack('<H', 100) + bytes([2]) + bytes(range(100))
    ops += bytes([8, 1]) + struct.pack('<I', 250)
    ops += bytes([8, 3]) + struct.pack('<I', CB * 3 + 17)
    ops += bytes([0]) + bm_pos(0, 0) + bm_pos(2, 0)
    ops += bytes([1]) + bm_pos(3, 100) + bm_pos(3, 9000)
    ops += bytes([8, 2 | (2 << 2)]) + struct.pack('<I', 0)
    ops += bytes([16]) + struct.pack('<H', 299)
    write('bitmap', 'boundary-load', struct.pack('<BI', 1, 77) + ops)
    # word-array helpers
    ops = bytes([17 | 0x80, 7])
    for op, a, b in ((0, 3, 700), (1, 64, 128), (2, 0, 1000), (3, 0, 1000), (2, 64, 128),
                     (3, 3, 64), (1, 0, 1000), (2, 0, 999)):
        ops += bytes([op]) + struct.pack('<HH', a, b)
    write('bitmap', 'bits-helpers', struct.pack('<BI', 0, 10) + ops)
    # a big one, all set then cleared in the middle, with walks
    ops = b''
    ops += bytes([0]) + bm_pos(0, 0) + bm_pos(2, 0)
    ops += bytes([1]) + bm_pos(1 | (2 << 2), 0) + bm_pos(1 | (3 << 2), 0)
    ops += bytes([5 | 0x80]) + bm_pos(0, 0) + bm_pos(2, 0) + bytes([9])
    ops += bytes([2 | 0x80]) + bm_pos(1 | (2 << 2), 3) + bm_pos(2, 0) + bytes([5])
    ops += bytes([16]) + struct.pack('<H', 40)
    ops += bytes([8, 1]) + struct.pack('<I', 77)
    ops += bytes([17]) + bm_pos(0, 0) + bm_pos(2, 0)
    write('bitmap', 'big-walk', struct.pack('<BI', 3, CB * 4 + 1000) + ops)
    # blocks written, then a failed sync (dirty again, only them), a good one
    ops = bytes([0]) + bm_pos(0, 100) + bm_pos(0, 9000)
    # (an operation byte is taken % 18; bits 0x80 and 0x40 pick variants:
    # 140 = note_written, 141 = failed sync, 195 = good sync)
    ops += bytes([140]) + struct.pack('<HH', 0, 3)
    ops += bytes([15]) + struct.pack('<HH', 0, 3)
    ops += bytes([16]) + struct.pack('<H', 9)
    ops += bytes([141])
    ops += bytes([16]) + struct.pack('<H', 9)
    ops += bytes([140]) + struct.pack('<HH', 1, 1) + bytes([195])
    ops += bytes([8, 1]) + struct.pack('<I', 299) + bytes([16]) + struct.pack('<H', 9)
    write('bitmap', 'unsynced', struct.pack('<BI', 0, 20000) + ops)
    write('bitmap', 'empty', b'')
    write('bitmap', 'zero-bits', struct.pack('<BI', 0, 0) + bytes([8, 0, 5, 0, 0, 0, 16, 1, 0]))


# ---- open: see the layout at the top of fuzz-open.c ----------------------------

def o_off(sel, v):
    return struct.pack('<BI', sel, v & 0xffffffff)


def o_len(sel, v):
    return struct.pack('<BI', sel, v & 0xffffffff)


def o_input(flags, addcow, script, hole=0, img64=0, base64=0, f2=0, mid_sectors=0, mid_seed=0):
    return struct.pack('<BBHHHBHB', flags, hole, len(addcow), img64, base64, f2, mid_sectors,
                       mid_seed) + addcow + script


READ, WRITE, WZ, FLUSH, TRUNC, WALK, HYD, REOPEN, FAULT, DETACH, COMMIT, GET, BAD, SECOND = range(14)


def op_read(off, ln, split=None):
    if split is None:
        return bytes([READ]) + off + ln
    return bytes([READ | 0x10]) + off + ln + bytes([len(split)]) + b''.join(
        struct.pack('<H', x) for x in split[:-1])


def op_write(off, ln, seed=1, split=None):
    if split is None:
        return bytes([WRITE]) + off + ln + bytes([seed])
    return bytes([WRITE | 0x10]) + off + ln + bytes([seed, len(split) - 1]) + b''.join(
        struct.pack('<H', x) for x in split)


def walk_all():
    return bytes([WALK]) + o_off(0, 0) + o_len(5, 0)


def gen_open():
    RDWR = 1
    bm = bytes([0x81, 0x80, 0x00, 0xC0, 0xE0, 0x00])         # 40 sectors
    good = header(b'base.raw', b'disk.raw', 20480) + bm
    script = b''
    script += op_read(o_off(0, 0), o_len(1, 20480))
    script += walk_all()
    script += op_write(o_off(0, 700), o_len(0, 1000), 7)
    script += op_write(o_off(4, 0xfff0), o_len(0, 300), 9)   # across the backing end
    script += bytes([WZ]) + o_off(0, 5000) + o_len(0, 3000)
    script += bytes([WZ | 0x10]) + o_off(2, 20) + o_len(2, 10)
    script += op_read(o_off(0, 0), o_len(1, 20480), split=[100, 5000, 0])
    script += bytes([GET, FLUSH])
    script += walk_all()
    script += bytes([REOPEN | 0x10])
    script += op_read(o_off(6, 12345), o_len(0, 4000))
    script += bytes([GET])
    write('open', 'basic', o_input(RDWR, good, script, img64=30 * 8, base64=23 * 8, f2=36))
    # read-only: writes refused, a second reader, status walks
    script = op_read(o_off(0, 0), o_len(1, 20480)) + walk_all()
    script += op_write(o_off(0, 0), o_len(0, 10))
    script += bytes([SECOND]) + o_off(0, 100)
    script += bytes([SECOND | 0x10])
    script += bytes([TRUNC, 0]) + o_off(0, 4096)
    write('open', 'rdonly', o_input(0, good, script, img64=30 * 8, base64=23 * 8, f2=36))
    # the test vectors as they are (their image files are not here) and renamed
    for v in ('v1/disk.add-cow', 'v2/odd.add-cow', 'v3/c2.add-cow'):
        with open(os.path.join(VECTORS, v), 'rb') as f:
            b = f.read()
        write('open', 'vector-' + v.replace('/', '-'), o_input(RDWR, b, walk_all(), img64=100))
    with open(os.path.join(VECTORS, 'v2/odd.add-cow'), 'rb') as f:
        b = bytearray(f.read())
    b[1036:2060] = b'disk.raw'.ljust(1024, b'\0')
    write('open', 'odd-size', o_input(RDWR, bytes(b), walk_all() + op_read(o_off(0, 0), o_len(1, 6000))
                                      + bytes([TRUNC, 2]) + struct.pack('<H', 3) + walk_all(),
                                      img64=80))
    # a chain: disk.add-cow over mid.add-cow over base.raw
    chain = header(b'mid.add-cow', b'disk.raw', 65536) + bytes(16)
    script = walk_all() + op_read(o_off(0, 0), o_len(1, 65536))
    script += op_write(o_off(0, 1000), o_len(0, 3000), 3)
    script += bytes([HYD]) + o_off(0, 0) + o_len(4, 0) + bytes([0, 1])
    script += walk_all() + bytes([DETACH, GET])
    script += bytes([COMMIT, 0, 1]) + walk_all()
    script += op_read(o_off(0, 0), o_len(1, 65536))
    script += bytes([REOPEN | 0x10]) + op_read(o_off(0, 0), o_len(1, 65536))
    write('open', 'chain', o_input(RDWR, chain, script, img64=200, base64=500, f2=0x40 | 5,
                                   mid_sectors=100, mid_seed=3))
    # hydrate with a cancel, then detach; commit cancelled
    script = bytes([HYD]) + o_off(0, 0) + o_len(4, 0) + bytes([1])
    script += walk_all() + bytes([DETACH])
    script += bytes([HYD]) + o_off(0, 0) + o_len(4, 0) + bytes([0, 1]) + bytes([DETACH, GET])
    script += bytes([REOPEN | 0x10]) + walk_all() + bytes([GET])
    write('open', 'hydrate-detach', o_input(RDWR, header(b'base.raw', b'disk.raw', 3 << 20) + bytes(768),
                                            script, base64=(2 << 20) // 64 + 100, f2=17))
    script = bytes([HYD]) + o_off(0, 0) + o_len(4, 0) + bytes([0, 0])
    script += op_write(o_off(0, 5000), o_len(3, 100000), 5) + op_write(o_off(0, 3 << 20), o_len(0, 777), 6)
    script += bytes([COMMIT, 2]) + walk_all() + bytes([GET, COMMIT, 0, 1]) + walk_all()
    script += bytes([REOPEN]) + op_read(o_off(0, 0), o_len(3, 1 << 20)) + walk_all()
    write('open', 'commit-cancel', o_input(RDWR, header(b'base.raw', b'disk.raw', 4 << 20) + bytes(1024),
                                           script, base64=(5 << 19) // 64, f2=9))
    # several bitmap chunks (256 MiB of disk each), most of it a hole
    big = header(b'base.raw', b'disk.raw', 3 << 28 | 12345) + bytes([0xff] * 16) + bytes(16) + b'\x55' * 8
    script = walk_all()
    script += op_write(o_off(3 | (1 << 3), 0xfe00), o_len(0, 1024), 4)       # across chunk 1's start
    script += op_write(o_off(3 | (2 << 3), 0xffff), o_len(0, 3), 4)
    script += bytes([WZ]) + o_off(3 | (1 << 3), 0xf000) + o_len(1, 40000)
    script += walk_all() + bytes([GET, FLUSH])
    script += bytes([TRUNC, 0]) + o_off(3 | (1 << 3), 0x1000)                # shrink into chunk 1
    script += walk_all() + bytes([TRUNC, 0]) + o_off(3 | (5 << 3), 0)        # grow to 5 chunks
    script += walk_all() + bytes([GET, REOPEN | 0x10]) + walk_all() + bytes([GET])
    write('open', 'chunks', o_input(RDWR, big, script, hole=48, img64=64, base64=300, f2=7))
    # huge: 4 TiB of disk from a 2 GiB sparse add-cow file; truncates to the limits
    huge = header(b'', b'disk.raw', 1 << 42)
    script = walk_all() + op_write(o_off(1, 5000), o_len(0, 4000), 2) + walk_all()
    script += bytes([TRUNC, 3]) + bytes([TRUNC, 3 | 4]) + bytes([GET])
    script += bytes([TRUNC, 0]) + o_off(7, 1 << 24)                           # 16 TiB
    script += walk_all() + bytes([TRUNC, 1]) + o_off(0, 1000)                 # unaligned
    script += bytes([TRUNC, 0]) + o_off(0, 1 << 20) + walk_all() + bytes([GET])
    write('open', 'huge', o_input(RDWR, huge, script, hole=0xff - 0x80 + 0x80))
    # injected faults: a write, a flush, a truncate fail; the image must reopen
    script = bytes([FAULT, 2, 0]) + op_write(o_off(0, 100), o_len(0, 5000), 1)
    script += bytes([FAULT, 3, 0x81]) + bytes([FLUSH]) + walk_all()
    script += bytes([REOPEN | 0x10]) + walk_all() + op_read(o_off(0, 0), o_len(1, 20480))
    script += bytes([FAULT, 5, 4]) + bytes([TRUNC, 0]) + o_off(0, 40960) + bytes([REOPEN | 0x10, GET])
    script += bytes([FAULT, 1, 1]) + bytes([COMMIT, 0, 0]) + bytes([REOPEN | 0x10]) + walk_all()
    write('open', 'faults', o_input(RDWR, good, script, img64=30 * 8, base64=23 * 8, f2=36))
    # bad arguments on a good image
    script = b''.join(bytes([BAD | (k << 4)]) for k in range(8))
    write('open', 'badargs', o_input(RDWR, good, script, img64=30 * 8, base64=23 * 8, f2=36))
    # headers that open must refuse, and paths it must refuse or resolve
    for name, hdr in (('version-2', header(version=2)), ('size-2p63', header(size=2**63)),
                      ('bad-magic', header(magic=1)), ('no-nul', header(image_field=b'x' * 1024)),
                      ('short', header()[:100]), ('truncated-bitmap', header(size=1 << 20) + bytes(10)),
                      ('image-is-self', header(image=b'disk.add-cow')),
                      ('backing-is-self', header(b'disk.add-cow')),
                      ('image-is-backing', header(b'base.raw', b'base.raw')),
                      ('image-is-dir', header(image=b'dir')),
                      ('absolute', header(b'/vm/base.raw', b'/vm/disk.raw')),
                      ('protocol', header(b'nbd://host/x')),
                      ('dotdot', header(b'../vm/base.raw')),
                      ('missing', header(b'nothing.raw'))):
        write('open', 'refuse-' + name, o_input(RDWR, hdr, walk_all(), img64=40, base64=40, f2=0x80))
        write('open', 'confined-' + name, o_input(RDWR | 2, hdr, walk_all(), img64=40, base64=40, f2=0x80))
    # the backing file forced raw: an add-cow file read as data
    write('open', 'backing-raw-format',
          o_input(RDWR | 4, header(b'mid.add-cow', b'disk.raw', 8192) + bytes(2),
                  walk_all() + op_read(o_off(0, 0), o_len(0, 4096)), img64=10, f2=0x40, mid_sectors=4))
    write('open', 'backing-addcow-format',
          o_input(RDWR | 8, header(b'base.raw', b'disk.raw', 8192) + bytes(2), walk_all(),
                  img64=10, base64=10))
    # create beside the open image: good ones, refused ones, one with a fault
    CREATE = 14

    def create(path, backing, image, size_mode, v=0):
        return bytes([CREATE, path | backing << 2, image | size_mode << 3]) + struct.pack('<I', v)
    script = create(0, 1, 0, 0) + create(0, 0, 1, 1, 100) + create(1, 0, 0, 1, 8)
    script += create(2, 0, 0, 1, 8) + create(0, 2, 0, 0) + create(0, 3, 0, 0) + create(0, 4, 0, 0)
    script += create(0, 5, 0, 0) + create(0, 6, 6, 0) + create(0, 7, 5, 1, 9) + create(3, 0, 0, 1, 3)
    script += create(0, 0, 2, 1, 1) + create(0, 0, 7, 1, 1) + create(0, 0, 3, 1, 1)
    script += create(0, 0, 4, 1, 1) + create(0, 0, 0, 2, 1000) + create(0, 0, 0, 3, 1)
    script += create(0, 0, 0, 3, 2) + bytes([FAULT, 3, 0]) + create(0, 1, 0, 0)
    script += bytes([FAULT, 9, 0x80]) + create(0, 1, 1, 0) + bytes([FAULT, 0, 0]) + create(0, 1, 0, 0)
    write('open', 'create', o_input(RDWR, good, script, img64=30 * 8, base64=23 * 8, f2=0x40 | 0x80 | 36,
                                    mid_sectors=20, mid_seed=1))
    # writethrough and none caches
    script = op_write(o_off(0, 10), o_len(0, 2000)) + bytes([WZ]) + o_off(0, 0) + o_len(5, 0) + walk_all()
    write('open', 'writethrough', o_input(RDWR | 0x10, good, script, img64=30 * 8, base64=23 * 8))
    write('open', 'cache-none-nolock', o_input(RDWR | 0x20 | 0x40, good, script + bytes([SECOND | 0x10]),
                                               img64=30 * 8, base64=23 * 8))


def main():
    gen_header()
    gen_bitmap()
    gen_open()


if __name__ == '__main__':
    sys.exit(main())
