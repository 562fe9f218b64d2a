"""A null-modem cable made of two pseudo-terminal pairs, pacing bytes at a baud rate.

The simulator opens one end as an ordinary serial port and the client opens the other, so both
sides go through pyserial and real termios settings, exactly as with a USB RS-485 adapter.
"""

from __future__ import annotations

import asyncio
import os
import tty


class PtyNullModem:
    """Two pty pairs whose masters are cross-connected; both slave ends stay open while alive."""

    def __init__(self, baudrate: int = 9600, bits_per_char: int = 11) -> None:
        # An RTU character is 11 bits: start, 8 data, parity (or 2nd stop), stop
        # (Modbus over Serial Line v1.02 §2.5.1).
        self.char_s = bits_per_char / baudrate
        self._m1, self._s1 = os.openpty()
        self._m2, self._s2 = os.openpty()
        for fd in (self._s1, self._s2):
            tty.setraw(fd)
        for fd in (self._m1, self._m2):
            os.set_blocking(fd, False)
        self.device_path = os.ttyname(self._s1)
        self.client_path = os.ttyname(self._s2)
        self._free_at = {self._m1: 0.0, self._m2: 0.0}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start moving bytes between the two ends (needs a running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._m1, self._pump, self._m1, self._m2)
        self._loop.add_reader(self._m2, self._pump, self._m2, self._m1)

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: cannot happen while we hold the slave open, but never crash
            return
        assert self._loop is not None
        now = self._loop.time()
        done = max(now, self._free_at[dst]) + len(data) * self.char_s
        self._free_at[dst] = done
        self._loop.call_at(done, self._deliver, dst, data)

    def _deliver(self, dst: int, data: bytes) -> None:
        if self._loop is None:  # closed meanwhile: the fd number may already be reused
            return
        try:
            os.write(dst, data)
        except OSError:
            pass  # closed while in flight, or the far end's buffer is full: bytes lost on the line

    def close(self) -> None:
        """Stop and close every descriptor."""
        if self._loop is not None:
            self._loop.remove_reader(self._m1)
            self._loop.remove_reader(self._m2)
            self._loop = None
        for fd in (self._m1, self._m2, self._s1, self._s2):
            try:
                os.close(fd)
            except OSError:
                pass
