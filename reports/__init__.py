"""Energy-saving and control-room shift reports (HTML, PDF, XLSX) from InfluxDB.

Every figure carries the formula that produced it and the share of the period its data
covers, as the campus office asks of every quantitative indicator.
"""
