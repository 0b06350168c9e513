"""Tests of the addcow Python module, against the real library.

Expected bytes are built here from the test's own writes (a bytearray
model of the disk), never read back from the library first.
"""

import errno
import os
import random
import shutil
import tempfile
import threading
import unittest

import addcow

MiB = 1 << 20


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="addcow-py.")
        self.base = os.path.join(self.dir, "base.raw")
        self.base_bytes = pattern(4 * MiB, 1)
        with open(self.base, "wb") as f:
            f.write(self.base_bytes)
        self.path = os.path.join(self.dir, "vm.add-cow")

    def tearDown(self):
        shutil.rmtree(self.dir)


class TestBasics(Base):
    def test_version_and_probe(self):
        self.assertRegex(addcow.version(), r"^\d+\.\d+\.\d+$")
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with open(self.path, "rb") as f:
            head = f.read(64)
        self.assertTrue(addcow.probe(head))
        self.assertFalse(addcow.probe(b"QFI\xfb" + bytes(60)))
        self.assertFalse(addcow.probe(b""))

    def test_create_open_properties(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path) as img:
            self.assertEqual(img.size, 4 * MiB)
            self.assertEqual(img.backing_file, "base.raw")
            self.assertEqual(img.image_file, "vm.raw")
            self.assertEqual(img.allocated_bytes, 0)
            self.assertEqual(img.read(0, 4096), self.base_bytes[:4096])
            self.assertEqual(list(img.runs()), [(0, 4 * MiB, 0)])

    def test_write_read_model(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        model = bytearray(self.base_bytes)
        writes = [(1000, pattern(5, 2)), (4095, pattern(3000, 3)),
                  (3 * MiB - 7, pattern(MiB // 2, 4)), (0, b"")]
        with addcow.Image(self.path, writable=True) as img:
            for off, data in writes:
                self.assertEqual(img.write(data, off), len(data))
                model[off:off + len(data)] = data
            img.write(bytearray(b"xyz"), 10)
            img.write(memoryview(b"--abc--")[2:5], 20)
            model[10:13] = b"xyz"
            model[20:23] = b"abc"
            self.assertEqual(img.read(0, 4 * MiB), bytes(model))
            buf = bytearray(100)
            self.assertEqual(img.readinto(buf, 4090), 100)
            self.assertEqual(bytes(buf), bytes(model[4090:4190]))
            # reads stop at the end of the disk
            self.assertEqual(img.read(4 * MiB - 10, 100), bytes(model[-10:]))
            self.assertEqual(img.read(4 * MiB, 100), b"")
            img.flush()
        # durable: a fresh handle reads the same
        with addcow.Image(self.path) as img:
            self.assertEqual(img.read(0, 4 * MiB), bytes(model))
            # allocated sectors: every sector a write touched
            sectors = set()
            for off, data in writes + [(10, b"xyz"), (20, b"abc")]:
                if data:
                    sectors.update(range(off // 512, (off + len(data) - 1) // 512 + 1))
            self.assertEqual(img.allocated_bytes, 512 * len(sectors))
            runs = list(img.runs())
            self.assertEqual(sum(r[1] for r in runs), 4 * MiB)
            allocated = sum(r[1] for r in runs if r[2] & addcow.STATUS_ALLOCATED)
            self.assertEqual(allocated, 512 * len(sectors))

    def test_write_zeroes_and_truncate(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True) as img:
            img.write_zeroes(512, 1024)
            self.assertEqual(img.read(0, 2048),
                             self.base_bytes[:512] + bytes(1024) + self.base_bytes[1536:2048])
            img.truncate(8 * MiB)
            self.assertEqual(img.size, 8 * MiB)
            self.assertEqual(img.read(6 * MiB, 4096), bytes(4096))
            flags, run = img.block_status(4 * MiB, 4 * MiB)
            self.assertEqual(flags, addcow.STATUS_ZERO)
            self.assertEqual(run, 4 * MiB)
            img.truncate(MiB)
            self.assertEqual(img.size, MiB)

    def test_hydrate_detach(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        seen = []
        with addcow.Image(self.path, writable=True) as img:
            img.write(b"hello", 777)
            with self.assertRaises(OSError) as cm:
                img.detach()
            self.assertEqual(cm.exception.errno, errno.EBUSY)
            img.hydrate(progress=lambda done, total: seen.append((done, total)))
            self.assertTrue(seen)
            self.assertEqual(seen[-1][0], seen[-1][1])
            img.detach()
            self.assertIsNone(img.backing_file)
        expect = bytearray(self.base_bytes)
        expect[777:782] = b"hello"
        with open(os.path.join(self.dir, "vm.raw"), "rb") as f:
            self.assertEqual(f.read(), bytes(expect))

    def test_progress_cancel_and_exception(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True) as img:
            with self.assertRaises(OSError) as cm:
                img.hydrate(progress=lambda d, t: True)
            self.assertEqual(cm.exception.errno, errno.ECANCELED)

            class Boom(Exception):
                pass

            def bad(d, t):
                raise Boom()
            with self.assertRaises(Boom):
                img.hydrate(progress=bad)
            img.hydrate()        # finishes: resumable
            self.assertEqual(img.allocated_bytes, 4 * MiB)

    def test_commit(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True) as img:
            img.write(b"\xab" * 4096, MiB)
            img.commit()
            self.assertEqual(img.allocated_bytes, 0)
        with open(self.base, "rb") as f:
            f.seek(MiB)
            self.assertEqual(f.read(4096), b"\xab" * 4096)

    def test_threads(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True) as img:
            def worker(k):
                for i in range(50):
                    off = (k * 50 + i) * 4096
                    img.write(bytes([k + 1]) * 4096, off)
            ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for k in range(4):
                self.assertEqual(img.read(k * 50 * 4096, 4096), bytes([k + 1]) * 4096)


class TestErrors(Base):
    def test_missing_file(self):
        with self.assertRaises(OSError) as cm:
            addcow.Image(os.path.join(self.dir, "nope.add-cow"))
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertIn("nope.add-cow", str(cm.exception))
        self.assertIn("addcow_open", cm.exception.strerror)

    def test_read_only_write(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path) as img:
            with self.assertRaises(OSError) as cm:
                img.write(b"x", 0)
            self.assertEqual(cm.exception.errno, errno.EBADF)

    def test_write_past_end(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True) as img:
            with self.assertRaises(OSError) as cm:
                img.write(b"xy", 4 * MiB - 1)
            self.assertEqual(cm.exception.errno, errno.ENOSPC)
            self.assertEqual(img.read(4 * MiB - 1, 1), self.base_bytes[-1:])

    def test_create_needs_image_file(self):
        with self.assertRaises(OSError) as cm:
            addcow.create(self.path, MiB)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertIn("image file", str(cm.exception))

    def test_bad_options(self):
        with self.assertRaises(OSError) as cm:
            addcow.create(self.path, MiB, image_file="vm.raw", options={"cache": "sometimes"})
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertIn("cache", str(cm.exception))
        with self.assertRaises(OSError) as cm:
            addcow.create(self.path, MiB, image_file="vm.raw", options={"no-such-key": "1"})
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertFalse(os.path.exists(self.path))

    def test_options_used(self):
        addcow.create(self.path, MiB, image_file="vm.raw",
                      options={"backend": "posix", "cache": "writethrough"})
        with addcow.Image(self.path, writable=True, options={"locking": "off"}) as img:
            self.assertEqual(img.size, MiB)

    def test_lock_conflict(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path, writable=True):
            with self.assertRaises(OSError) as cm:
                addcow.Image(self.path, writable=True)
            self.assertEqual(cm.exception.errno, errno.EBUSY)

    def test_closed(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        img = addcow.Image(self.path)
        img.close()
        img.close()
        with self.assertRaises(ValueError):
            img.read(0, 1)

    def test_block_status_bad_range(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path) as img:
            with self.assertRaises(OSError) as cm:
                img.block_status(4 * MiB, 512)
            self.assertEqual(cm.exception.errno, errno.EINVAL)

    def test_readinto_readonly_buffer(self):
        addcow.create(self.path, backing_file="base.raw", image_file="vm.raw")
        with addcow.Image(self.path) as img:
            with self.assertRaises(TypeError):
                img.readinto(b"immutable", 0)


if __name__ == "__main__":
    unittest.main()
