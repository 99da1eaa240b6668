package vm

import "sync"

// keyedLocks serializes operations by key (a VM's name, an image's name).
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock takes key's lock and returns its unlock. Locks of keys nobody holds
// or waits for are forgotten, so the map does not grow with every name ever
// used.
func (l *keyedLocks) lock(key string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyedLock{}
	}
	k := l.m[key]
	if k == nil {
		k = &keyedLock{}
		l.m[key] = k
	}
	k.users++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		k.users--
		if k.users == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}

// tryLock takes key's lock when nobody holds it.
func (l *keyedLocks) tryLock(key string) (func(), bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*keyedLock{}
	}
	k := l.m[key]
	if k == nil {
		k = &keyedLock{}
		l.m[key] = k
	}
	if !k.TryLock() {
		if k.users == 0 {
			delete(l.m, key)
		}
		return nil, false
	}
	k.users++
	return func() {
		k.Unlock()
		l.mu.Lock()
		k.users--
		if k.users == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}, true
}
