"""The REST service and its web page: ``medsight serve BUNDLE``.

Nothing here is imported by the rest of medsight, and it needs no training code. Import
:func:`medsight.serve.app.create_app` to embed the app, or run it with
:func:`medsight.serve.server.run_server`.
"""
