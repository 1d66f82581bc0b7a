"""One simulated unit (slave id): a device model, its register image and its faults."""

from __future__ import annotations

from collections.abc import Sequence

from cellctl_sim.modbus.devices import DeviceModel
from cellctl_sim.modbus.faults import ILLEGAL_ADDRESS, ILLEGAL_VALUE, Faults
from cellctl_sim.modbus.registers import Point, RegisterImage, RegisterMap, Table, Value, WireType, canonical


class SimUnit:
    """What a client reaches at one unit id.

    `value()`/`snapshot()` give the engineering values a correct client decodes right
    now (raw, before any profile scale). `read()`/`write()` are the datastore the
    Modbus server calls: gaps inside a table read as zero, addresses past the last
    point are illegal, and only writable points accept writes.
    """

    def __init__(self, unit_id: int, model: DeviceModel, image: RegisterImage) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is outside 1..247")
        self.unit_id = unit_id
        self.model = model
        self.image = image
        self.faults = Faults()
        self.requests = 0  # requests addressed to this unit (answered or not)
        # Every write request accepted, in order (table, address, values): what reached
        # the machine, for tests that prove nothing else did.
        self.writes: list[tuple[Table, int, list[int] | list[bool]]] = []
        reg_map = model.MAP
        self._writable = {t: reg_map.writable_addresses(t) for t in (Table.HOLDING, Table.COIL)}

    @property
    def device_type(self) -> str:
        return self.model.TYPE

    @property
    def register_map(self) -> RegisterMap:
        return self.model.MAP

    @property
    def points(self) -> tuple[Point, ...]:
        return self.model.MAP.points

    def point(self, name: str) -> Point:
        return self.model.MAP.get(name)

    def value(self, name: str) -> Value:
        return self.model.value(name)

    def snapshot(self) -> dict[str, Value]:
        return self.model.snapshot()

    def set_value(self, name: str, value: Value) -> None:
        """Force a value (test helper): the model adopts it and the registers follow now."""
        self.model.set(name, value)
        self.model.render(self.image)

    # -- datastore ---------------------------------------------------------------------
    def read(self, table: Table, address: int, count: int) -> list[int] | list[bool] | int:
        """Values of `count` addresses from `address`, or an exception code."""
        data = self.image.table(table)
        if address < 0 or count < 1 or address + count > len(data):
            return ILLEGAL_ADDRESS
        return data[address : address + count]

    def write(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> int | None:
        """Store a client's write; None when accepted, else an exception code.

        Writes are all or nothing: one read-only address in the range rejects the
        whole request. Written points are decoded (by the sim's own codec) and handed
        to the model, which keeps them until written again.
        """
        count = len(values)
        writable = self._writable.get(table, frozenset())
        if any(a not in writable for a in range(address, address + count)):
            return ILLEGAL_ADDRESS
        return self._store(table, address, values)

    def load(self, table: Table | str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Set raw registers or bits directly, read-only ones too (test helper): what a
        test needs the wire to show, and the model adopts the decoded points."""
        table = Table(table)
        rc = self._store(table, address, values)
        if rc is not None:
            size = len(self.image.table(table))
            raise ValueError(f"unit {self.unit_id}: cannot load {len(values)} value(s) at {table} {address} (table size {size})")

    def _store(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> int | None:
        data = self.image.table(table)
        count = len(values)
        if address < 0 or count < 1 or address + count > len(data):
            return ILLEGAL_ADDRESS
        before = data[address : address + count]
        new: list[int] | list[bool] = (
            [bool(v) for v in values] if table.is_bits else [int(v) & 0xFFFF for v in values]
        )
        if self.faults.ignore_writes:
            self.writes.append((table, address, new))
            return None
        data[address : address + count] = new  # type: ignore[assignment]
        touched = [p for p in self.model.MAP.overlapping(table, address, count) if p.type is not WireType.BIT]
        try:
            updates = [(p.name, canonical(p, self.image.get(p))) for p in touched]
        except (ValueError, TypeError, OverflowError):  # e.g. non-ASCII bytes for a string
            data[address : address + count] = before  # type: ignore[assignment]
            return ILLEGAL_VALUE
        for name, value in updates:
            self.model.set(name, value)
        self.writes.append((table, address, new))
        return None
