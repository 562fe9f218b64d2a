"""CabinetSim: a Cabinet served over Modbus TCP or RTU by pymodbus, with injectable faults."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer

from .cabinet import Cabinet, RegisterKind
from .pty import PtyNullModem

FaultMode = Literal["none", "no_answer", "exception", "garble"]
FAULT_MODES: tuple[FaultMode, ...] = ("none", "no_answer", "exception", "garble")

# function code -> register kind (Modbus Application Protocol v1.1b3 §6)
_KIND_OF_FC: dict[int, RegisterKind] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
_WRITE_FCS = frozenset({5, 6, 15, 16, 22})


@dataclass(frozen=True)
class Fault:
    """A communication fault: none, no_answer, exception (with its code) or garble."""

    mode: FaultMode = "none"
    code: int = 4  # SLAVE DEVICE FAILURE

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r} (known: {', '.join(FAULT_MODES)})")
        if self.mode == "exception" and self.code not in {int(c) for c in ExcCodes}:
            raise ValueError(f"{self.code} is not a Modbus exception code")


class _CabinetContext(ModbusServerContext):
    """pymodbus datastore adapter answering from the Cabinet (the 3.x 'old simulator' hook)."""

    def __init__(self, sim: CabinetSim) -> None:  # no super(): it only logs a deprecation
        self.old_simulator = True
        self.simdevices = []
        self._sim = sim

    def device_ids(self) -> list[int]:
        return [self._sim.unit]

    def _check(self, device_id: int) -> ExcCodes | None:
        if device_id != self._sim.unit:
            # like a real RS-485 device: a frame for another unit gets no answer at all
            raise NoSuchIdException(f"unit {device_id}")
        fault = self._sim.fault
        return ExcCodes(fault.code) if fault.mode == "exception" else None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if (exc := self._check(device_id)) is not None:
            return exc
        if func_code not in _WRITE_FCS:  # the write already waited in async_setValues
            await self._sim.wait_response(func_code, count)
        result = self._sim.cabinet.read(_KIND_OF_FC[func_code], address, count)
        return ExcCodes(result) if isinstance(result, int) else result

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Any
    ) -> ExcCodes | None:
        if (exc := self._check(device_id)) is not None:
            return exc
        values = list(values) if isinstance(values, list | tuple) else [values]
        await self._sim.wait_response(func_code, len(values))
        result = self._sim.cabinet.write(_KIND_OF_FC[func_code], address, values)
        return None if result is None else ExcCodes(result)


class CabinetSim:
    """A simulated lamp cabinet served over Modbus; an async context manager.

    TCP by default (``port=0`` picks a free port, see ``tcp_port``); ``rtu="/dev/ttyUSB0"``
    serves RTU on a serial port; ``rtu_pty=True`` serves RTU through a pty null-modem whose
    client end is ``client_path``.
    """

    def __init__(
        self,
        lamps: int = 8,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        rated_w: float = 60.0,
        scratch: int = 16,
        delay_s: float | None = None,
        rtu: str | None = None,
        rtu_pty: bool = False,
        baudrate: int = 9600,
        parity: str | None = None,
        stopbits: int = 1,
        bytesize: int = 8,
        seed: int | None = None,
        churn: bool = False,
    ) -> None:
        if rtu and rtu_pty:
            raise ValueError("give either rtu (a serial port) or rtu_pty, not both")
        if parity is None:
            parity = "N" if rtu_pty else "E"  # E is the Modbus serial default (MBSL v1.02 §2.5.1)
        if rtu_pty and parity != "N":
            # Linux ptys drop PARENB and pyserial's next tcsetattr then fails with EINVAL.
            raise ValueError("a pty cannot carry parity: use parity 'N' with rtu_pty")
        if not 1 <= unit <= 247:
            raise ValueError(f"unit must be 1..247, got {unit}")
        self.cabinet = Cabinet(lamps, rated_w=rated_w, scratch=scratch, seed=seed, churn=churn)
        self.unit = unit
        self.host = host
        self.port = port
        self.rtu = rtu
        self.rtu_pty = rtu_pty
        self.serial: dict[str, Any] = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        # TCP answers after a few ms like a small controller; RTU is paced by the line itself.
        self.delay_s = delay_s if delay_s is not None else (0.0 if self.is_rtu else 0.002)
        self.fault = Fault()
        self.requests: Counter[int] = Counter()  # function code -> requests received
        self.request_log: deque[tuple[int, int, int]] = deque(maxlen=10_000)  # (fc, addr, count)
        self.client_path: str | None = rtu
        self._server: ModbusBaseServer | None = None
        self._pty: PtyNullModem | None = None

    @property
    def is_rtu(self) -> bool:
        """True when serving RTU (serial port or pty)."""
        return bool(self.rtu or self.rtu_pty)

    @property
    def request_count(self) -> int:
        """Requests received since start (or the last reset_counters)."""
        return sum(self.requests.values())

    def reset_counters(self) -> None:
        """Forget the requests counted so far."""
        self.requests.clear()
        self.request_log.clear()

    # -- faults and field state ------------------------------------------------------------

    def set_fault(self, mode: FaultMode, code: int = 4) -> None:
        """Inject a communication fault (``"none"`` clears it)."""
        self.fault = Fault(mode, code)

    def fail_lamp(self, n: int) -> None:
        """Make lamp n fail: level and power drop to 0, its failure flag rises."""
        self._lamp(n)
        self.cabinet.advance()
        self.cabinet.lamps[n].failed = True

    def repair_lamp(self, n: int) -> None:
        """Repair lamp n."""
        self._lamp(n)
        self.cabinet.advance()
        self.cabinet.lamps[n].failed = False

    def set_door(self, open_: bool) -> None:
        """Open or close the cabinet door contact."""
        self.cabinet.door_open = open_

    def clear(self) -> None:
        """Clear every fault: communication, lamp failures, door."""
        self.set_fault("none")
        self.cabinet.advance()
        for lamp in self.cabinet.lamps:
            lamp.failed = False
        self.cabinet.door_open = False

    def level(self, n: int) -> int:
        """Actual level of lamp n in percent."""
        self._lamp(n)
        return self.cabinet.level(n)

    def setpoint(self, n: int) -> int:
        """Level setpoint of lamp n (holding 100+10n)."""
        self._lamp(n)
        return self.cabinet.lamps[n].setpoint

    def state(self) -> dict[str, Any]:
        """Everything as JSON-able data: fault, counters and every mapped register."""
        return {
            "unit": self.unit,
            "fault": {"mode": self.fault.mode, "code": self.fault.code},
            "requests": self.request_count,
            **self.cabinet.snapshot(),
        }

    def _lamp(self, n: int) -> None:
        if not 0 <= n < len(self.cabinet.lamps):
            raise IndexError(f"no lamp {n} (this cabinet has {len(self.cabinet.lamps)})")

    # -- pymodbus hooks --------------------------------------------------------------------

    async def wait_response(self, func_code: int, count: int) -> None:
        """The controller's processing time before it answers."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            address = getattr(pdu, "address", getattr(pdu, "read_address", 0))
            count = (
                getattr(pdu, "count", 0)
                or getattr(pdu, "read_count", 0)
                or len(getattr(pdu, "registers", ()) or getattr(pdu, "bits", ()) or ())
                or 1
            )
            self.requests[pdu.function_code] += 1
            self.request_log.append((pdu.function_code, address, count))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or self.fault.mode in ("none", "exception"):
            return data
        if self.fault.mode == "no_answer":
            return b""  # the request was processed, the answer is lost
        # garble: RTU gets a wrong CRC; TCP a frame one byte short of its MBAP length
        if self.is_rtu:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data[:-1]

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        context = _CabinetContext(self)
        hooks: dict[str, Any] = {
            "trace_pdu": self._trace_pdu,
            "trace_packet": self._trace_packet,
            "ignore_missing_devices": True,
        }
        server: ModbusBaseServer
        if self.is_rtu:
            if self.rtu_pty:
                self._pty = PtyNullModem(int(self.serial["baudrate"]))
                self._pty.start()
                self.client_path = self._pty.client_path
                device_path = self._pty.device_path
            else:
                assert self.rtu is not None
                device_path = self.rtu
            server = ModbusSerialServer(
                context, framer=FramerType.RTU, port=device_path, **self.serial, **hooks
            )
        else:
            server = ModbusTcpServer(context, address=(self.host, self.port), **hooks)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus's way of saying "could not listen"
            await server.shutdown()
            await self._close()
            raise OSError(f"cannot serve Modbus on {self.describe()}: {err}") from err
        except BaseException:
            await server.shutdown()
            await self._close()
            raise
        self._server = server
        if not self.is_rtu:
            sockets = getattr(server.transport, "sockets", None) or ()
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def tcp_port(self) -> int:
        """The TCP port actually listened on."""
        return self.port

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    def describe(self) -> str:
        """Where clients reach this simulator, e.g. ``tcp=127.0.0.1:5020`` or ``rtu=/dev/pts/7``."""
        if self.is_rtu:
            return f"rtu={self.client_path}"
        return f"tcp={self.host}:{self.port}"
