"""People in the loop: the duty roster, escalating notifications, repair work orders.

A service beside the rules engine. It learns of incidents from the broker (AlertMessage on
alert/{id}) and answers through it (an AlertOperation on command/alert/{target}, the
protocol the control-room page uses); it never imports rules, gateway or ingest.
See docs/duty.md.
"""
