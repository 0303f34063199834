from setuptools import find_packages, setup

setup(
    name="hermes_tx",
    version="0.1.0",
    description="Hermes: Postgres-talking, event-driven, failure-handling Twisted services",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    packages=find_packages(include=["hermes_tx", "hermes_tx.*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/hermes_plugin.py"],
        "hermes_tx.outbox": ["migrations/*.sql"],
    },
    entry_points={"console_scripts": ["hermes-tx = hermes_tx.outbox.cli:main"]},
    python_requires=">=3.9",
    install_requires=[
        "twisted>=22.10",
        "txpostgres==1.7.0",
        "psycopg2-binary>=2.9",
        "watchdog>=3",
        "prometheus_client>=0.17",
        "txredisapi>=1.6",
        "pika>=1.3",
        "nats-py>=2.16",
    ],
    classifiers=["Framework :: Twisted"],
)
