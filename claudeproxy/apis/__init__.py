"""The upstream APIs claudeproxy speaks, one subpackage or module each.

No I/O. Every API answers the same three questions -- what request is sent,
what a JSON answer becomes, what each stream event becomes -- so the pipeline
and the relay above them never ask which API they are talking to.
"""
