"""The i8042 keyboard controller, enough for a PC-style reset and Linux's probe.

Ports 0x60 (data) and 0x64 (status on read, command on write). Command bytes
and status bits follow the classic 8042 interface as Linux's
drivers/input/serio/i8042.h names them. No keyboard or mouse is attached:
commands for them get no answer, as with an empty socket, and the AUX
(mouse) port reports itself broken so that Linux stops probing it at once. The command that
matters is 0xFE, "pulse the reset line", which ends (or restarts) the VM.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.devices.device import DeviceModel, Resources, State, fields

DATA_PORT = 0x60
COMMAND_PORT = 0x64  # also the status register

# Relative to DATA_PORT: the device is registered on 0x60-0x64.
_DATA = 0
_COMMAND = COMMAND_PORT - DATA_PORT
PORT_SPAN = _COMMAND + 1

STATUS_OBF = 0x01  # output buffer full: a byte waits at 0x60
STATUS_SYS = 0x04  # system flag: the self-test passed
STATUS_CMD = 0x08  # the last write was to the command port
STATUS_KEYLOCK = 0x10  # keyboard not inhibited (the key lock is open)

CMD_READ_CTR = 0x20  # read the controller configuration ("command") byte
CMD_WRITE_CTR = 0x60  # next data byte is the new configuration byte
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9  # answers 0x00 if the AUX interface works
CMD_SELF_TEST = 0xAA  # answers 0x55
CMD_KBD_TEST = 0xAB  # answers 0x00 (interface OK)
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1  # next data byte is the output port; bit 0 low = reset
CMD_PULSE_RESET = 0xFE  # pulse output port bit 0: reset the CPU

SELF_TEST_OK = 0x55
AUX_TEST_CLOCK_STUCK_LOW = 0x01  # AUX interface test failure code
CTR_KBD_DISABLED = 0x10
CTR_AUX_DISABLED = 0x20
CTR_SYS = 0x04
OUTPUT_PORT_RESET = 0x01  # output port bit 0: the CPU reset line, active low
OUTPUT_PORT_A20 = 0x02


class I8042(DeviceModel):
    """Calls ``on_reset`` when the guest pulses the CPU reset line."""

    name = "i8042"

    def __init__(self, on_reset: Callable[[], None]) -> None:
        super().__init__()
        self._on_reset = on_reset
        self.ctr = CTR_SYS | CTR_AUX_DISABLED
        self.status = STATUS_SYS | STATUS_KEYLOCK
        self.output: int | None = None
        self.output_port = OUTPUT_PORT_RESET | OUTPUT_PORT_A20
        self._pending: int | None = None  # command waiting for its data byte

    def resources(self) -> Resources:
        return Resources(ports=(DATA_PORT, PORT_SPAN))

    def state(self) -> State:
        with self.lock:
            return {
                "ctr": self.ctr,
                "status": self.status,
                "output": -1 if self.output is None else self.output,
                "output_port": self.output_port,
                "pending": -1 if self._pending is None else self._pending,
            }

    def restore(self, state: State) -> None:
        v = fields(state, {"ctr": (0, 0xFF), "status": (0, 0xFF), "output": (-1, 0xFF),
                           "output_port": (0, 0xFF), "pending": (-1, 0xFF)})  # fmt: skip
        with self.lock:
            self.ctr, self.status, self.output_port = v["ctr"], v["status"], v["output_port"]
            self.output = None if v["output"] < 0 else v["output"]
            self._pending = None if v["pending"] < 0 else v["pending"]

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._read_byte(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(data):
            self._write_byte(offset + i, value)

    def _read_byte(self, offset: int) -> int:
        if offset == _DATA:
            value = self.output if self.output is not None else 0
            self.output = None
            return value
        if offset == _COMMAND:
            return self.status | (STATUS_OBF if self.output is not None else 0)
        return 0xFF  # 0x61-0x63 are not ours (0x61 is the PIT's speaker port)

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == _COMMAND:
            self.status |= STATUS_CMD
            self._command(value)
        elif offset == _DATA:
            self.status &= ~STATUS_CMD
            pending, self._pending = self._pending, None
            if pending == CMD_WRITE_CTR:
                self.ctr = value
            elif pending == CMD_WRITE_OUTPUT_PORT:
                self.output_port = value
                if not value & OUTPUT_PORT_RESET:
                    self._on_reset()
            # Anything else is a byte for the (absent) keyboard.

    def _command(self, cmd: int) -> None:
        self._pending = None
        if cmd == CMD_READ_CTR:
            self.output = self.ctr
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
            self._pending = cmd
        elif cmd == CMD_SELF_TEST:
            self.output = SELF_TEST_OK
        elif cmd == CMD_KBD_TEST:
            self.output = 0x00
        elif cmd == CMD_AUX_TEST:
            self.output = AUX_TEST_CLOCK_STUCK_LOW
        elif cmd == CMD_KBD_DISABLE:
            self.ctr |= CTR_KBD_DISABLED
        elif cmd == CMD_KBD_ENABLE:
            self.ctr &= ~CTR_KBD_DISABLED
        elif cmd == CMD_AUX_DISABLE:
            self.ctr |= CTR_AUX_DISABLED
        elif cmd == CMD_AUX_ENABLE:
            self.ctr &= ~CTR_AUX_DISABLED
        elif cmd == CMD_READ_OUTPUT_PORT:
            self.output = self.output_port
        elif cmd == CMD_PULSE_RESET:
            self._on_reset()
