from agentlightning import Trainer
from agentlightning.execution import ClientServerExecutionStrategy
from agentlightning.store.client_server import LightningStoreClient

trainer = Trainer(
    algorithm=algorithm,
    n_runners=4,
    store=LightningStoreClient("http://127.0.0.1:4318"),  # was http://127.0.0.1:4747
    strategy=ClientServerExecutionStrategy(n_runners=4, managed_store=False),
)
trainer.fit(agent, train_dataset=tasks)
