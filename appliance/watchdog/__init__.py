"""The idle watchdog: activity signals, the idle decision, and the stop actions it takes
(`python -m appliance.watchdog`, supervisord's idle-watchdog program).
"""
