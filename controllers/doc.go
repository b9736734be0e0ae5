// Package controllers holds the FalCredential reconciler of the falguard
// manager (the pod-injection webhook lives in controllers/podwebhook).
//
// The reconciler turns each FalCredential into one managed Secret,
// falguard-<name>, holding the files `key` and `policy.json` the sidecar
// mounts. It verifies a key once per change by minting a token with it,
// rotates keys through fal's Platform API when spec.rotation is set, and
// deletes the keys it created when the FalCredential goes away.
//
// Durability: the managed Secret is the only place an operator-created key's
// secret half lives, so the lifecycle record (key id, source, publish time,
// previous key and when it is revoked, last rotate-now value) is kept in its
// annotations and written in the same update as the key. Status mirrors that
// record; status.pendingKeyAlias is written before a key is created so that a
// crash between creating and publishing leaves a findable orphan, which the
// next reconcile deletes. See falcredential_rotation.go for the step-by-step
// argument and falcredential_setup.go for what is cached and why.
package controllers
