"""A bollard command's state, folded from its audit rows: the projection of the audit log
that the API serves (GET /api/commands) and the shift report lists."""

from __future__ import annotations

from pydantic import BaseModel, Field

from audit.log import AuditRow

FINAL = {"done", "refused", "failed", "timed_out", "expired", "duplicate", "no_result"}
# For a group, the command's status is its worst target's.
WORST_FIRST = ["failed", "timed_out", "no_result", "refused", "expired", "duplicate", "done"]
DECISIONS = {"approved", "rejected", "approval_expired", "superseded"}


class TargetResult(BaseModel):
    device: str
    status: str = Field(description="pending, accepted, done, refused, failed, timed_out, "
                                    "expired, duplicate, no_result")
    detail: str
    ts: int


class Approval(BaseModel):
    required: bool
    expires_at: int = Field(description="ns; 0 when no approval is needed")
    decision: str = Field(description="'', approved, rejected, approval_expired, superseded")
    decided_by: str
    decided_at: int


class CommandView(BaseModel):
    id: str
    action: str
    targets: list[str]
    zones: list[str]
    reason: str
    requested_by: str
    requested_at: int
    status: str = Field(description="awaiting_approval, rejected, approval_expired, "
                                    "superseded, refused, sent, accepted, done, failed, "
                                    "timed_out, expired, duplicate, no_result")
    final: bool
    detail: str
    approval: Approval
    issued_at: int
    expires_at: int
    results: list[TargetResult]


def fold(command_id: str, rows: list[AuditRow], now: int = 0) -> CommandView | None:
    """A command's state from its audit rows (oldest first). With `now`, an approval
    that ran out while nobody recorded it (the API was down) reads as expired."""
    requested = next((r for r in rows if r.event == "requested"), None)
    if requested is None:
        refused = [r for r in rows if r.event == "refused"]
        if not refused:
            return None
        last = refused[-1]
        return CommandView(id=command_id, action=last.action, targets=last.targets, zones=[],
                           reason=last.reason, requested_by=last.username,
                           requested_at=last.ts, status="refused", final=True,
                           detail=last.detail,
                           approval=Approval(required=False, expires_at=0, decision="",
                                             decided_by="", decided_at=0),
                           issued_at=0, expires_at=0, results=[])
    data = requested.data
    decision = next((r for r in rows if r.event in DECISIONS), None)
    approval = Approval(required=bool(data.get("approval_required")),
                        expires_at=int(data.get("approval_expires_at", 0)),
                        decision=decision.event if decision else "",
                        decided_by=decision.username if decision else "",
                        decided_at=decision.ts if decision else 0)
    issued = data if "issued_at" in data else (decision.data if decision else {})
    targets: dict[str, TargetResult] = {t: TargetResult(device=t, status="pending", detail="",
                                                        ts=0) for t in requested.targets}
    for row in rows:
        if row.event == "result" and row.targets:
            device = row.targets[0]
            have = targets.get(device)
            if have is None or (have.status in FINAL and row.outcome not in FINAL):
                continue  # an 'accepted' that arrives after the outcome changes nothing
            targets[device] = TargetResult(device=device, status=row.outcome,
                                           detail=row.detail, ts=row.ts)
    results = list(targets.values())
    status, detail = _status(approval, decision, rows, results)
    if status == "awaiting_approval" and now and now > approval.expires_at:
        status, detail = "approval_expired", "the time to approve ran out"
    return CommandView(id=command_id, action=requested.action, targets=requested.targets,
                       zones=list(data.get("zones", [])), reason=requested.reason,
                       requested_by=requested.username, requested_at=requested.ts,
                       status=status, final=status not in ("awaiting_approval", "sent",
                                                           "accepted"),
                       detail=detail, approval=approval,
                       issued_at=int(issued.get("issued_at", 0)),
                       expires_at=int(issued.get("expires_at", 0)), results=results)


def _status(approval: Approval, decision: AuditRow | None, rows: list[AuditRow],
            results: list[TargetResult]) -> tuple[str, str]:
    if approval.required and decision is None:
        return "awaiting_approval", ""
    if decision is not None and decision.event != "approved":
        return decision.event, decision.detail
    failed = next((r for r in rows if r.event == "send_failed"), None)
    if failed is not None:
        return "failed", failed.detail
    statuses = [r.status for r in results]
    if statuses and all(s in FINAL for s in statuses):
        worst = min(statuses, key=WORST_FIRST.index)
        detail = next((r.detail for r in results if r.status == worst), "")
        return worst, detail
    if any(s != "pending" for s in statuses):
        return "accepted", ""
    return "sent", ""
