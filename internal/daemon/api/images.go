package api

import (
	"context"
	"net/http"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/vm"
)

func imageView(img *vm.Image, b *bundle.Bundle) rpc.Image {
	v := rpc.Image{Name: img.Name, Rootfs: img.Rootfs, WorkSeed: img.WorkSeed, Default: img.Default, Managed: img.Managed, Size: img.Size(),
		Kernel: img.Kernel, Initrd: img.Initrd, Modules: img.Modules, KernelVersion: img.KernelVersion, Warm: vm.WarmNone}
	if img.Kernel == "" && b != nil {
		v.KernelVersion = b.KernelVersion
	}
	return v
}

// warmView is imageView with whether creates of the image are warm.
func (s *Server) warmView(ctx context.Context, b *bundle.Bundle, img *vm.Image) rpc.Image {
	v := imageView(img, b)
	st := s.Engine.WarmStatus(ctx, b, img)
	v.Warm, v.WarmReason = st.State, st.Reason
	if !st.Created.IsZero() {
		v.WarmSince = &st.Created
	}
	return v
}

func (s *Server) handleImages(w http.ResponseWriter, r *http.Request) {
	b, err := s.Engine.Bundle()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	imgs, err := s.Engine.Images().List(r.Context(), b)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := []rpc.Image{}
	for i := range imgs {
		out = append(out, s.warmView(r.Context(), b, &imgs[i]))
	}
	writeJSON(w, 200, out)
}

func (s *Server) handleRegisterImage(w http.ResponseWriter, r *http.Request) {
	var req rpc.RegisterImageRequest
	if err := decode(r, "register", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	b, err := s.Engine.Bundle()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	img, err := s.Engine.RegisterImage(r.Context(), b, vm.RegisterOptions{Name: req.Name, Rootfs: req.Rootfs, WorkSeed: req.WorkSeed,
		Kernel: req.Kernel, Initrd: req.Initrd, Modules: req.Modules})
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, imageView(img, b))
}

func (s *Server) handleDeleteImage(w http.ResponseWriter, r *http.Request) {
	b, _ := s.Engine.Bundle()
	if err := s.Engine.DeleteImage(r.Context(), b, r.PathValue("name")); err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (s *Server) handleWarmImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, err := s.Engine.Bundle()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	if _, err := s.Engine.Images().Resolve(r.Context(), b, name); err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		ctx := s.Engine.Context()
		if _, err := s.Engine.Warm(ctx, name, pr); err != nil {
			return rpc.Event{}, err
		}
		img, err := s.Engine.Images().Resolve(ctx, b, name)
		if err != nil {
			return rpc.Event{}, err
		}
		v := s.warmView(ctx, b, img)
		return rpc.Event{Image: &v}, nil
	})
}

func (s *Server) handleBuildImage(w http.ResponseWriter, r *http.Request) {
	var req rpc.BuildImageRequest
	if err := decode(r, "build", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	b, err := s.Engine.Bundle()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	o := vm.BuildOptions{Name: req.Name, Kind: req.Kind, Size: req.Size}
	if err := s.Engine.Images().PlanBuild(r.Context(), b, &o); err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		img, err := s.Engine.Images().Build(s.Engine.Context(), b, o, pr)
		if err != nil {
			return rpc.Event{}, err
		}
		v := imageView(img, b)
		return rpc.Event{Image: &v}, nil
	})
}
