"""Ingress: what starts tasks from outside.

`webhooks` is the public endpoint (it never touches the database), `signatures` the verification
schemes, `credentials` reads the signing secrets kept in the vault, `intake` turns verified
deliveries into tasks. The daemon composes them:

    verifiers = await credentials.read_verifiers(pool, config)   # sources with a secret_ref
    intake = intake.DurableIntake(pool, registry.registry, config.engine)
    intake.check(config.ingress.sources)           # every source names a registered workflow
    app = webhooks.build_app(config.ingress, intake, verifiers=verifiers)
    ...                                            # serve it; on shutdown, after the listener:
    await intake.close()                           # before the pool closes
"""
