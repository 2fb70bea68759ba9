"""Optional record filtering before shipping: include or exclude by Operation, Workload, RecordType.

Off unless a setting asks for it. Include lists keep only matching records; exclude lists then drop
matching ones. Operation and Workload match case-insensitively (the service is not consistent:
``DlpRuleMatch`` vs ``DLPRuleMatch``); RecordType matches the number. Filtered records are counted,
never silently lost: the counts appear in the per-blob result and the run summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .envparse import Environ, get_list
from .errors import ConfigError
from .models import Record


@dataclass(frozen=True, slots=True)
class RecordFilter:
    include_operations: frozenset[str] = frozenset()
    exclude_operations: frozenset[str] = frozenset()
    include_workloads: frozenset[str] = frozenset()
    exclude_workloads: frozenset[str] = frozenset()
    include_record_types: frozenset[int] = frozenset()
    exclude_record_types: frozenset[int] = frozenset()

    @property
    def active(self) -> bool:
        return any(
            (
                self.include_operations,
                self.exclude_operations,
                self.include_workloads,
                self.exclude_workloads,
                self.include_record_types,
                self.exclude_record_types,
            )
        )

    @classmethod
    def from_env(cls, env: Environ) -> RecordFilter:
        return cls(
            include_operations=_words(env, "O365_FILTER_INCLUDE_OPERATIONS"),
            exclude_operations=_words(env, "O365_FILTER_EXCLUDE_OPERATIONS"),
            include_workloads=_words(env, "O365_FILTER_INCLUDE_WORKLOADS"),
            exclude_workloads=_words(env, "O365_FILTER_EXCLUDE_WORKLOADS"),
            include_record_types=_numbers(env, "O365_FILTER_INCLUDE_RECORD_TYPES"),
            exclude_record_types=_numbers(env, "O365_FILTER_EXCLUDE_RECORD_TYPES"),
        )

    def keeps(self, record: Record) -> bool:
        operation = str(record.get("Operation", "")).lower()
        workload = str(record.get("Workload", "")).lower()
        record_type = record.get("RecordType")
        if self.include_operations and operation not in self.include_operations:
            return False
        if self.include_workloads and workload not in self.include_workloads:
            return False
        if self.include_record_types and record_type not in self.include_record_types:
            return False
        return not (
            operation in self.exclude_operations
            or workload in self.exclude_workloads
            or record_type in self.exclude_record_types
        )

    def apply(self, records: Sequence[Record]) -> tuple[Sequence[Record], int]:
        """The records to ship and how many were filtered out."""
        if not self.active:
            return records, 0
        kept = [r for r in records if self.keeps(r)]
        return kept, len(records) - len(kept)


def _words(env: Environ, name: str) -> frozenset[str]:
    return frozenset(item.lower() for item in get_list(env, name) or [])


def _numbers(env: Environ, name: str) -> frozenset[int]:
    values: set[int] = set()
    for item in get_list(env, name) or []:
        try:
            values.add(int(item))
        except ValueError:
            raise ConfigError(
                name, f"{item!r} is not a RecordType number (e.g. 15 for AzureActiveDirectoryStsLogon)"
            ) from None
    return frozenset(values)
