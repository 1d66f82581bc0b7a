"""What `cellctl check` prints: the cell, its topics and each device's planned requests."""

from __future__ import annotations

from typing import Any

from cellctl.config.loader import CompiledCell
from cellctl.encode.uns import cell_root


def summary(compiled: CompiledCell) -> dict[str, Any]:
    cfg = compiled.config
    root = cell_root(cfg.publish.prefix, cfg.identity)
    devices = []
    for d in compiled.devices:
        devices.append(
            {
                "id": d.config.id,
                "driver": d.config.driver,
                "profile": d.profile.name,
                "profile_file": str(d.profile_path),
                "points": len(d.points),
                "poll_interval_s": d.config.poll_interval,
                "timeout_s": d.config.timeout,
                "requests": d.plugin.plan_summary(d.context),
                "topics": {"data": f"{root}/{d.config.id}/data", "state": f"{root}/{d.config.id}/state"},
            }
        )
    return {
        "config": str(compiled.path),
        "cell": cfg.identity.model_dump(),
        "backbone": f"{cfg.backbone.host}:{cfg.backbone.port} (MQTT {cfg.backbone.protocol}, QoS {cfg.backbone.qos})",
        "status_topic": f"{root}/status",
        "publish_mode": cfg.publish.mode,
        "formats": list(cfg.publish.formats),
        "state_dir": str(
            cfg.state_dir if cfg.state_dir.is_absolute() else compiled.path.parent / cfg.state_dir
        ),
        **(
            {
                "sparkplug": {
                    "group_id": cfg.sparkplug_group_id,
                    "edge_node_id": cfg.sparkplug_edge_node_id,
                    "primary_host": cfg.sparkplug.primary_host,
                }
            }
            if "sparkplug" in cfg.publish.formats
            else {}
        ),
        "devices": devices,
        "disabled_devices": [d.id for d in cfg.devices if not d.enabled],
    }


def print_summary(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cell = data["cell"]
    path = "/".join(cell[k] for k in ("enterprise", "site", "area", "line", "cell"))
    console.print(f"[green]ok[/green] {data['config']}: cell {path}")
    console.print(
        f"backbone {data['backbone']}; status topic {data['status_topic']}; mode {data['publish_mode']}"
    )
    console.print(f"formats {', '.join(data['formats'])}; state dir {data['state_dir']}")
    spb = data.get("sparkplug")
    if spb:
        host = f"; primary host {spb['primary_host']}" if spb["primary_host"] else ""
        console.print(f"sparkplug spBv1.0/{spb['group_id']}/+/{spb['edge_node_id']}{host}")
    table = Table("device", "driver", "profile", "points", "poll", "requests")
    total_points = total_requests = 0
    for d in data["devices"]:
        total_points += d["points"]
        total_requests += len(d["requests"])
        table.add_row(
            d["id"],
            d["driver"],
            d["profile"],
            str(d["points"]),
            f"{d['poll_interval_s']:g} s",
            "\n".join(d["requests"]),
        )
    console.print(table)
    disabled = f"; disabled: {', '.join(data['disabled_devices'])}" if data["disabled_devices"] else ""
    console.print(
        f"{len(data['devices'])} device(s), {total_points} point(s), {total_requests} request(s) per scan{disabled}"
    )
