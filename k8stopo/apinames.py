"""Kubernetes' syntax of names and labels (apimachinery pkg/util/validation), in one place.

The manifests reader and the NetworkPolicy parser both refuse what the API server
refuses: a label key or selector value it would reject can never select a pod here either,
so accepting it would silently change what a policy means. Each check takes any value
(YAML may give a number or a list) and is False for a non-string.
"""
from __future__ import annotations

import re
from typing import Any

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def dns_label(value: Any) -> bool:
    """IsDNS1123Label: a namespace, a Pod's, Service's or container's name."""
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS1123_LABEL.fullmatch(value))


def dns_subdomain(value: Any) -> bool:
    """IsDNS1123Subdomain: a NetworkPolicy's name, a label key's prefix."""
    return (isinstance(value, str) and len(value) <= 253
            and bool(_DNS1123_SUBDOMAIN.fullmatch(value)))


def port_name(value: Any) -> bool:
    """IsValidPortName (an IANA_SVC_NAME): a named container port or targetPort."""
    return (isinstance(value, str) and 1 <= len(value) <= 15
            and re.fullmatch(r"[-a-z0-9]+", value) is not None
            and re.search(r"[a-z]", value) is not None
            and not value.startswith("-") and not value.endswith("-") and "--" not in value)


def label_key(value: Any) -> bool:
    """IsQualifiedName: ``[prefix/]name``, the prefix a DNS subdomain; label and
    annotation keys."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    return ((not slash or dns_subdomain(prefix)) and len(name) <= 63
            and bool(_QUALIFIED.fullmatch(name)))


def label_value(value: Any) -> bool:
    """IsValidLabelValue: empty, or at most 63 of ``[-A-Za-z0-9_.]`` between alphanumerics."""
    return isinstance(value, str) and len(value) <= 63 and (
        value == "" or bool(_QUALIFIED.fullmatch(value)))
