"""What a PyTorch training loop adds to be watched by trainwatch: a Publisher,
one call per batch and one per epoch (marked `# trainwatch`), plus optional
status reports and command handling.

Needs PyTorch (`pip install torch`), which trainwatch itself does not: this
file is a pattern to copy into your own script, with a stand-in model and
random data so that it also runs as is. Against a running agent:

    cargo build --release
    export TRAINWATCH_LIB=$PWD/target/release/libtrainwatch.so
    PYTHONPATH=python python3 examples/pytorch_snippet.py

It publishes into $TRAINWATCH_SHM_DIR, else /dev/shm/trainwatch (the agent's
default directory).
"""
import torch
import torch.nn.functional as F

from trainwatch import Publisher

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
epochs, batches = 2, 50
loader = [(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))) for _ in range(batches)]

pub = Publisher("pytorch-example", total_epochs=epochs, batches_per_epoch=batches,  # trainwatch
                batch_size=64, model_name="linear", dataset_name="random")
pub.status("RUNNING", "started")
for epoch in range(epochs):
    for batch_idx, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        conf, pred = out.softmax(1).max(1)
        # trainwatch: tensors must be on the CPU; .cpu() copies only the 16 shown.
        # wants_images() skips even that copy when the agent would not read it.
        if pub.wants_images():
            pub.batch(epoch=epoch, batch_idx=batch_idx, images=x[:16].detach().cpu(),
                      predictions=pred[:16].cpu(), confidences=conf[:16].detach().cpu(),
                      labels=y[:16].cpu(), loss=loss.item(), layout="NCHW", mean=MEAN, std=STD)
        else:
            pub.batch(epoch=epoch, batch_idx=batch_idx, loss=loss.item())
        for command, params in pub.commands():  # optional: obey the dashboard
            if command == "CHANGE_LEARNING_RATE":
                for g in opt.param_groups:
                    g["lr"] = float(params["learning_rate"])
                pub.status("RUNNING", "learning rate set to %s" % params["learning_rate"])
    pub.epoch(epoch, average_loss=loss.item(),  # trainwatch
              average_accuracy=(pred == y).float().mean().item())
pub.status("COMPLETED", "done")
pub.close()
