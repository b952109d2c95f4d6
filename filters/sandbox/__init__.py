"""The sandbox that runs untrusted generated code: the parent side (``runner``) and the child (``launcher``)."""
