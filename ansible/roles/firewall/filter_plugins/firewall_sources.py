"""Filters of the firewall role: which of its source lists admit an address (Python's ipaddress, no netaddr)."""

from __future__ import annotations

import ipaddress


def firewall_admits(sources: list[str], address: str) -> bool:
    """True when `address` is `any`-admitted or inside one of the CIDRs / equal to one of the addresses."""
    if not address:
        return True
    if "any" in sources:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    for source in sources:
        try:
            if ip in ipaddress.ip_network(source, strict=False):
                return True
        except ValueError:
            continue
    return False


def firewall_family(sources: list[str], family: int) -> list[str]:
    """The sources of one IP family (4 or 6); `any` belongs to both."""
    picked = []
    for source in sources:
        if source == "any":
            picked.append(source)
            continue
        try:
            if ipaddress.ip_network(source, strict=False).version == family:
                picked.append(source)
        except ValueError:
            continue
    return picked


class FilterModule:
    def filters(self):
        return {"firewall_admits": firewall_admits, "firewall_family": firewall_family}
