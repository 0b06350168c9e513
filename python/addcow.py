"""addcow: Python bindings for libaddcow, through ctypes.

libaddcow reads and writes add-cow disk images: a copy-on-write overlay
made of an add-cow file (header and bitmap), a raw image file holding the
written sectors, and an optional backing file.  This module wraps the
public C API one to one; it has no compiled part.  It loads the library
by its soname, libaddcow.so.1 (set ADDCOW_LIBRARY to a path to load
another file).

    import addcow
    addcow.create("vm.add-cow", backing_file="base.raw", image_file="vm.raw")
    with addcow.Image("vm.add-cow", writable=True) as img:
        img.write(b"hello", 1000)
        img.flush()
        for start, length, flags in img.runs():
            ...

Every failure raises OSError with the errno of the C call and the
library's message (addcow_last_error()) as its text.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from typing import Callable, Iterator, Mapping, Optional, Tuple

__all__ = [
    "Image", "create", "probe", "version",
    "OPEN_RDONLY", "OPEN_RDWR", "ZEROES_MAY_UNMAP",
    "STATUS_ALLOCATED", "STATUS_ZERO", "SONAME",
]

SONAME = "libaddcow.so.1"

OPEN_RDONLY = 0x0
OPEN_RDWR = 0x1
ZEROES_MAY_UNMAP = 0x1
STATUS_ALLOCATED = 0x1
STATUS_ZERO = 0x2

Progress = Callable[[int, int], Optional[bool]]

_lib = ctypes.CDLL(os.environ.get("ADDCOW_LIBRARY", SONAME), use_errno=True)

_c_image_p = ctypes.c_void_p
_c_options_p = ctypes.c_void_p
_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                ctypes.c_void_p)


def _proto(name: str, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_version = _proto("addcow_version", ctypes.c_char_p)
_last_error = _proto("addcow_last_error", ctypes.c_char_p)
_options_new = _proto("addcow_options_new", _c_options_p)
_options_free = _proto("addcow_options_free", None, _c_options_p)
_options_set = _proto("addcow_options_set", ctypes.c_int, _c_options_p,
                      ctypes.c_char_p, ctypes.c_char_p)
_create = _proto("addcow_create", ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64,
                 ctypes.c_char_p, ctypes.c_char_p, _c_options_p)
_open = _proto("addcow_open", ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
               _c_options_p, ctypes.POINTER(_c_image_p))
_close = _proto("addcow_close", ctypes.c_int, _c_image_p)
_get_size = _proto("addcow_get_size", ctypes.c_int64, _c_image_p)
_get_backing = _proto("addcow_get_backing_file", ctypes.c_char_p, _c_image_p)
_get_image = _proto("addcow_get_image_file", ctypes.c_char_p, _c_image_p)
_get_allocated = _proto("addcow_get_allocated_bytes", ctypes.c_int64, _c_image_p)
_pread = _proto("addcow_pread", ctypes.c_int64, _c_image_p, ctypes.c_void_p,
                ctypes.c_size_t, ctypes.c_uint64)
_pwrite = _proto("addcow_pwrite", ctypes.c_int64, _c_image_p, ctypes.c_void_p,
                 ctypes.c_size_t, ctypes.c_uint64)
_write_zeroes = _proto("addcow_write_zeroes", ctypes.c_int, _c_image_p,
                       ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint)
_flush = _proto("addcow_flush", ctypes.c_int, _c_image_p)
_truncate = _proto("addcow_truncate", ctypes.c_int, _c_image_p, ctypes.c_uint64)
_block_status = _proto("addcow_block_status", ctypes.c_int, _c_image_p,
                       ctypes.c_uint64, ctypes.c_uint64,
                       ctypes.POINTER(ctypes.c_uint64))
_probe = _proto("addcow_probe", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_hydrate = _proto("addcow_hydrate", ctypes.c_int, _c_image_p, ctypes.c_uint64,
                  ctypes.c_uint64, _PROGRESS_FN, ctypes.c_void_p)
_detach = _proto("addcow_detach", ctypes.c_int, _c_image_p)
_commit = _proto("addcow_commit", ctypes.c_int, _c_image_p, _PROGRESS_FN,
                 ctypes.c_void_p)


def _fs(path) -> bytes:
    return os.fsencode(path)


def _check(ret: int) -> int:
    """Raises OSError for a negative return value (a negated errno)."""
    if ret < 0:
        msg = _last_error()
        raise OSError(-ret, msg.decode("utf-8", "replace") if msg else os.strerror(-ret))
    return ret


def version() -> str:
    """The library's version, e.g. "1.1.0"."""
    return _version().decode()


def probe(data: bytes) -> bool:
    """True if data starts with an add-cow version 1 header."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    return _probe(buf, len(data)) == 1


class _Options:
    """An addcow_options handle built from a mapping of strings."""

    def __init__(self, options: Optional[Mapping[str, str]]):
        self.handle = None
        if not options:
            return
        self.handle = _options_new()
        if not self.handle:
            _check(-_errno.ENOMEM)
        try:
            for key, value in options.items():
                _check(_options_set(self.handle, str(key).encode(), str(value).encode()))
        except BaseException:
            _options_free(self.handle)
            raise

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc):
        if self.handle:
            _options_free(self.handle)
            self.handle = None


def create(path, size: int = 0, backing_file=None, image_file=None,
           options: Optional[Mapping[str, str]] = None) -> None:
    """Creates an add-cow image.  size 0 takes the backing file's size.
    image_file is required by the library (OSError EINVAL without it); a
    relative one is stored as given and resolved against path's folder."""
    with _Options(options) as opts:
        _check(_create(_fs(path), size,
                       _fs(backing_file) if backing_file is not None else None,
                       _fs(image_file) if image_file is not None else None, opts))


def _progress_thunk(progress: Optional[Progress]):
    """A C callback for progress (None: a NULL pointer).  An exception in
    the Python callback cancels the operation and is raised afterwards."""
    box = {"exc": None}
    if progress is None:
        return _PROGRESS_FN(), box

    def thunk(done, total, _opaque):
        try:
            return 1 if progress(done, total) else 0
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            box["exc"] = e
            return 1
    return _PROGRESS_FN(thunk), box


class Image:
    """An open add-cow image (one addcow_image handle).

    Safe to use from several threads at once, as the C handle is, except
    that close(), truncate(), detach() and commit() must not run alongside
    other calls.  Use it as a context manager, or call close()."""

    def __init__(self, path, writable: bool = False,
                 options: Optional[Mapping[str, str]] = None):
        self._h = None
        handle = _c_image_p()
        with _Options(options) as opts:
            _check(_open(_fs(path), OPEN_RDWR if writable else OPEN_RDONLY, opts,
                         ctypes.byref(handle)))
        self._h = handle
        self.path = os.fsdecode(_fs(path))
        self.writable = writable

    # -- life cycle --------------------------------------------------------

    def close(self) -> None:
        """Flushes (when writable) and closes; a second close does nothing."""
        if self._h is not None:
            h, self._h = self._h, None
            _check(_close(h))

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            try:
                _close(self._h)
            except Exception:  # noqa: BLE001 - nothing to report to at exit
                pass
            self._h = None

    def _handle(self):
        if self._h is None:
            raise ValueError("I/O operation on a closed add-cow image")
        return self._h

    # -- properties --------------------------------------------------------

    @property
    def size(self) -> int:
        """The virtual size in bytes."""
        return _check(_get_size(self._handle()))

    @property
    def backing_file(self) -> Optional[str]:
        """The backing file as stored in the header, or None."""
        p = _get_backing(self._handle())
        return os.fsdecode(p) if p else None

    @property
    def image_file(self) -> str:
        """The image file as stored in the header."""
        return os.fsdecode(_get_image(self._handle()))

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the disk held in the image file (512 per set bit)."""
        return _check(_get_allocated(self._handle()))

    # -- data --------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Reads length bytes at offset; fewer where the disk ends."""
        buf = ctypes.create_string_buffer(length) if length else None
        n = _check(_pread(self._handle(), buf, length, offset))
        return buf.raw[:n] if buf is not None else b""

    def readinto(self, buf, offset: int) -> int:
        """Reads into a writable buffer (bytearray, memoryview, ...)."""
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise TypeError("readinto needs a writable buffer")
        if len(mv) == 0:
            return 0
        c = (ctypes.c_char * len(mv)).from_buffer(mv)
        return _check(_pread(self._handle(), c, len(mv), offset))

    def write(self, data, offset: int) -> int:
        """Writes data (any bytes-like object) at offset; returns its length."""
        mv = memoryview(data).cast("B")
        if len(mv) == 0:
            return _check(_pwrite(self._handle(), None, 0, offset))
        src = bytes(mv) if mv.readonly else (ctypes.c_char * len(mv)).from_buffer(mv)
        return _check(_pwrite(self._handle(), src, len(mv), offset))

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Makes [offset, offset + length) read as zeros."""
        _check(_write_zeroes(self._handle(), offset, length,
                             ZEROES_MAY_UNMAP if may_unmap else 0))

    def flush(self) -> None:
        """Makes every completed write durable."""
        _check(_flush(self._handle()))

    def truncate(self, size: int) -> None:
        """Grows (new area reads zeros) or shrinks; size a multiple of 512."""
        _check(_truncate(self._handle(), size))

    # -- allocation --------------------------------------------------------

    def block_status(self, offset: int, length: int) -> Tuple[int, int]:
        """(flags, run_length) of the run starting at offset."""
        run = ctypes.c_uint64()
        flags = _check(_block_status(self._handle(), offset, length, ctypes.byref(run)))
        return flags, run.value

    def runs(self, offset: int = 0, length: Optional[int] = None
             ) -> Iterator[Tuple[int, int, int]]:
        """Walks [offset, offset + length) as (start, length, flags) runs."""
        end = self.size if length is None else offset + length
        pos = offset
        while pos < end:
            flags, run = self.block_status(pos, end - pos)
            yield pos, run, flags
            pos += run

    # -- long operations (ABI 1.1) ----------------------------------------

    def hydrate(self, offset: int = 0, length: int = 0,
                progress: Optional[Progress] = None) -> None:
        """Copies backing data into the image file (length 0: to the end).
        progress(done, total) returning True stops it (OSError ECANCELED)."""
        cb, box = _progress_thunk(progress)
        ret = _hydrate(self._handle(), offset, length, cb, None)
        if box["exc"] is not None:
            raise box["exc"]
        _check(ret)

    def detach(self) -> None:
        """Drops the backing file once no sector reads from it."""
        _check(_detach(self._handle()))

    def commit(self, progress: Optional[Progress] = None) -> None:
        """Writes the allocated sectors into the backing file."""
        cb, box = _progress_thunk(progress)
        ret = _commit(self._handle(), cb, None)
        if box["exc"] is not None:
            raise box["exc"]
        _check(ret)
