"""The local environment for tests and the demo: a real kube-apiserver and etcd, a node, lab hypervisor
hosts and their guests. A package of its own, outside the operator's distribution and image: the
operator (`vemigrate`) never imports it; it may import `vemigrate.api` to write example objects. Its
verbs (`vemigrate controlplane | lab | demo`) are registered by `vemigrate_dev.commands`."""
